namespace SEmigrate.Contracts.Migration;

/// <summary>An operator's request: move VM <paramref name="Vm"/>, whose memory the source holds as its guest
/// <paramref name="Guest"/> (a name in the source's own guest folder, never a path: hosts share no
/// files), from <paramref name="Source"/> to <paramref name="Main"/> plus <paramref name="SubHosts"/>.
/// Processes in <paramref name="PlainProcesses"/> keep their own data encrypted, so their pages may
/// travel as-is (authenticated, not encrypted).
/// Its authority: the operator's <paramref name="Signature"/> over all the rest, valid until
/// <paramref name="NotAfter"/>, with the destinations' keys <paramref name="Pinned"/>; or, for a drain's
/// migration, the signed <paramref name="Order"/> that allows it (then it is not signed itself). Every step
/// carries it, and every host checks that the step is one it allows (see StepGuard).</summary>
public sealed record MigrationRequest(
    Guid MigrationId,
    Guid Vm,
    string Guest,
    string Source,
    Destination Main,
    IReadOnlyList<Destination> SubHosts,
    MigrationMode Mode,
    IReadOnlyList<string> PlainProcesses,
    IReadOnlyList<PinnedHost>? Pinned = null,
    DateTimeOffset? NotAfter = null,
    byte[]? Signature = null,
    DrainOrder? Order = null);

/// <summary>A host that takes part of the VM's memory and how many pages it may hold.</summary>
public sealed record Destination(string Host, long CapacityPages);

/// <summary>Pages per class.</summary>
public sealed record PageCounts(long Zero, long Plain, long Sealed)
{
    public long Total => Zero + Plain + Sealed;
}
