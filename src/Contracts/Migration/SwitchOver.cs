namespace SEmigrate.Contracts.Migration;

/// <summary>At the source, once every page is at its destination: send the main host the manifest (the
/// class of every page, sealed under the data key, over the page path) and wrap the data key for the
/// main host's public key. <paramref name="Capability"/>: the VM's at the main host's memory server, wrapped
/// for the source.</summary>
public sealed record HandOver(Guid MigrationId, Guid Vm, string Main, byte[] MainPublicKey, MigrationRequest? Request = null, byte[]? Capability = null);

/// <summary>The wrapped data key (only the main host's private key opens it, and only as the source's: see
/// KeyWrap.WrapFrom), the manifest's size on the wire, the SHA-256 of the manifest sent (hex) and the key
/// epoch it was sealed under.</summary>
public sealed record HandedOver(byte[] WrappedKey, long ManifestBytes, string? ManifestDigest = null, uint? Epoch = null);

/// <summary>At the main host: take over the VM: unwrap the key, open the manifest it received, and serve
/// every page from then on (its own from its store, the rest from the sub-hosts of the placement).
/// <paramref name="Guest"/>: its name at the source; a running guest goes by it at the main host too,
/// so that it can be moved on from there (see SourceGuest). <paramref name="Capabilities"/>: the destinations'
/// capabilities for the VM, wrapped for the main host, which releases the VM there when it stops.
/// <paramref name="Epoch"/> and <paramref name="ManifestDigest"/>: the hand-over's, as the source reported them
/// (its wrap of the key is bound to both, and every record of what it handed over is of that epoch).</summary>
public sealed record SwitchOver(Guid MigrationId, Guid Vm, string Main, MigrationMode Mode, byte[] WrappedKey, PlacementPlan Placement, string? Guest = null,
    MigrationRequest? Request = null, IReadOnlyList<HostCapability>? Capabilities = null, uint Epoch = 0, string? ManifestDigest = null);

/// <summary>A destination's capability for the VM, wrapped for the main host (see PagingStarted).</summary>
public sealed record HostCapability(string Host, byte[] Wrapped);

/// <summary>The VM is at the main host: <paramref name="LocalPages"/> held there, <paramref name="RemotePages"/>
/// at sub-hosts (free pages count where their range is placed, though nothing of them travelled);
/// <paramref name="Running"/> when it was a running guest, which now runs there on RAM its pager serves,
/// continued at <paramref name="ContinuedAt"/> (the main host's clock). <paramref name="ManifestDigest"/>: the
/// SHA-256 of the manifest the main host opened (hex). <paramref name="Receipt"/>: proof that the main host
/// holds the data key, which only a main host that took the VM over has (see DataKey.Receipt): the source
/// lets the VM go only with it.</summary>
public sealed record SwitchedOverResult(string Main, long LocalPages, long RemotePages, bool Running = false, DateTimeOffset? ContinuedAt = null,
    string? ManifestDigest = null, string? Receipt = null);

/// <summary>At the source, or at the main host after switch-over: a digest of every guest page in
/// [<paramref name="FirstPfn"/>, <paramref name="EndPfn"/>), one per chunk of <paramref name="ChunkPages"/>
/// pages, as that host sees the VM's memory (the source: what it sent, a free page as zeros in
/// semigrate mode; the main host: every page read through its pager, fetched, checked and opened).
/// Equal digests on both hosts mean the same memory without either sending it to the other. The digests
/// are MACs under a key derived from the migration's data key, so they tell their reader (the
/// orchestrator) nothing of the pages; a host digests only for the migration's signed
/// <paramref name="Request"/>, within the VM's pages. Each page's MAC covers its number, and all of them the
/// caller's <paramref name="Nonce"/>: digests of two checks (or of two pages) tell nothing of each other.</summary>
public sealed record DigestMemory(Guid MigrationId, Guid Vm, string Host, long FirstPfn, long EndPfn, int ChunkPages, MigrationRequest? Request = null,
    byte[]? Nonce = null);

/// <summary>Guest pages digested, how many came from sub-hosts, a MAC per chunk (16 bytes, hex) and
/// one over every page.</summary>
public sealed record MemoryDigest(long Pages, long FetchedPages, IReadOnlyList<string> Chunks, string Digest);

/// <summary>At the main host: stop a VM that was migrated there (its QEMU ends if it runs) and release its
/// pages everywhere: at every sub-host of its placement and in the main host's own store. The operator's
/// <paramref name="Signature"/> over the rest, valid until <paramref name="NotAfter"/> (a forged stop would end
/// a running VM and drop its only memory).</summary>
public sealed record StopVm(Guid MigrationId, Guid Vm, string Main, DateTimeOffset? NotAfter = null, byte[]? Signature = null);

/// <summary>The VM is gone: the pages each host released.</summary>
public sealed record VmStopped(Guid MigrationId, IReadOnlyList<PagingReleased> Released);

/// <summary>At the source: the VM has left (or stays, after compensation); drop the migration's key and state.
/// That it left takes the main host's <paramref name="Receipt"/> (a forged release would end the only running copy).</summary>
public sealed record ReleaseSource(Guid MigrationId, Guid Vm, bool VmLeft, MigrationRequest? Request = null, string? Receipt = null);

public sealed record SourceReleased(bool VmLeft);
