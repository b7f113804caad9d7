namespace SEmigrate.Contracts.Migration;

/// <summary>At a destination: serve this VM's pages (idempotent). Its share is <paramref name="ExpectedPages"/>
/// guest pages (it must have room for them all: free ones may be paged out to it later), of which
/// <paramref name="ArrivingPages"/> travel now (the memory it prepares at once). <paramref name="Round"/>
/// is 1, or more when paging starts again at a host that lost the VM (see TransferPages). <paramref name="Measured"/>:
/// under a drain order, the source's word that it measured the guest for this migration (see <see cref="SourceVouch"/>).</summary>
public sealed record StartPaging(Guid MigrationId, Guid Vm, string Host, MigrationMode Mode, long ExpectedPages, long ArrivingPages, int Round = 1,
    MigrationRequest? Request = null, SourceVouch? Measured = null);

/// <summary>The destination serves the VM. <paramref name="HostKey"/> is the main host's public key, for
/// which the data key is wrapped (null at a sub-host); <paramref name="ServerKey"/> is its memory
/// server's, used only by the allenc baseline to send that server the channel key. <paramref name="HeldPages"/>:
/// pages of the VM the host held already (a host that lost the VM holds none; a file store that came
/// back holds what it had acknowledged).
/// <paramref name="Capability"/>: the VM's capability at this host's memory server (who holds it can address
/// the VM's queues there, release it and see its use), wrapped for the main host's pinned key: only the main
/// host, which pages from this host after switch-over, opens it (null at the main host itself).
/// <paramref name="ForSource"/>: the same, wrapped for the source's pinned key, to send the VM's pages.</summary>
public sealed record PagingStarted(string Host, byte[] ServerKey, byte[]? HostKey, long HeldPages = 0, byte[]? Capability = null, byte[]? ForSource = null);

/// <summary>At a destination: drop the VM's pages (compensation, or after switch-over for the main host's copy).</summary>
public sealed record ReleasePaging(Guid MigrationId, Guid Vm, string Host, MigrationRequest? Request = null);

/// <summary>A destination let go of the VM's pages; a main host that declined the VM (it never took it over,
/// and now never will) says so in <paramref name="Declined"/>, a proof the source checks before it lets a
/// guest it handed over run on (see TakeOvers).</summary>
public sealed record PagingReleased(string Host, long Pages, string? Declined = null);
