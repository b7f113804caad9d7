namespace SEmigrate.Contracts.Migration;

/// <summary>At the source: the migration's data key, wrapped for the main host's public key.</summary>
public sealed record WrapKey(Guid MigrationId, Guid Vm, string Main, byte[] MainPublicKey);

/// <summary>The wrapped data key: only the main host's private key opens it.</summary>
public sealed record KeyWrapped(byte[] WrappedKey);

/// <summary>At the main host: take over the VM: its core state, where every page is, and the wrapped key.
/// The per-page classes come from the source's classification map (<paramref name="MapPath"/>).</summary>
public sealed record SwitchOver(
    Guid MigrationId, Guid Vm, string Main, MigrationMode Mode, byte[] WrappedKey, string MapPath, PlacementPlan Placement);

/// <summary>The VM runs at the main host: <paramref name="LocalPages"/> in its memory, the rest at sub-hosts.</summary>
public sealed record SwitchedOverResult(string Main, long LocalPages, long RemotePages, string ImagePath);

/// <summary>At the source: the VM has left (or stays, after compensation); drop the migration's key and state.</summary>
public sealed record ReleaseSource(Guid MigrationId, Guid Vm, bool VmLeft);

public sealed record SourceReleased(bool VmLeft);

/// <summary>At the main host, after switch-over (the demo's and the tests' check; one machine only, since
/// it reads the source's memory from <paramref name="GuestDir"/>): rebuild the guest's memory from the
/// main host's pages and every sub-host page fetched and opened, and compare each page's digest with
/// the source's (a free page compares as zeros: its stale bytes must not travel).</summary>
public sealed record VerifyMemory(Guid MigrationId, Guid Vm, string GuestDir, string MapPath);

/// <summary>The check's result: pages compared, how many differ (the first few named), how many
/// came from sub-hosts, and a digest over every page's digest.</summary>
public sealed record MemoryVerified(long Pages, long Mismatches, IReadOnlyList<long> FirstMismatches, long FetchedPages, string Digest);
