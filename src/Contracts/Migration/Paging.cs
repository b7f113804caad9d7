namespace SEmigrate.Contracts.Migration;

/// <summary>At a destination: serve this VM's pages (idempotent). Its share is <paramref name="ExpectedPages"/>
/// guest pages (it must have room for them all: free ones may be paged out to it later), of which
/// <paramref name="ArrivingPages"/> travel now (the memory it prepares at once).</summary>
public sealed record StartPaging(Guid MigrationId, Guid Vm, string Host, MigrationMode Mode, long ExpectedPages, long ArrivingPages);

/// <summary>The destination serves the VM. <paramref name="HostKey"/> is the main host's public key, for
/// which the data key is wrapped (null at a sub-host); <paramref name="ServerKey"/> is its memory
/// server's, used only by the allenc baseline to send that server the channel key.</summary>
public sealed record PagingStarted(string Host, byte[] ServerKey, byte[]? HostKey);

/// <summary>At a destination: drop the VM's pages (compensation, or after switch-over for the main host's copy).</summary>
public sealed record ReleasePaging(Guid MigrationId, Guid Vm, string Host);

public sealed record PagingReleased(string Host, long Pages);
