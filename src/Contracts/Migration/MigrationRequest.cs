namespace SEmigrate.Contracts.Migration;

/// <summary>An operator's request: move VM <paramref name="Vm"/>, whose memory the source holds in
/// <paramref name="GuestDir"/> (a guest made by `semigrate guest boot`), from <paramref name="Source"/> to
/// <paramref name="Main"/> plus <paramref name="SubHosts"/>. Processes in <paramref name="PlainProcesses"/>
/// keep their own data encrypted, so their pages may travel as-is.</summary>
public sealed record MigrationRequest(
    Guid MigrationId,
    Guid Vm,
    string GuestDir,
    string Source,
    Destination Main,
    IReadOnlyList<Destination> SubHosts,
    MigrationMode Mode,
    IReadOnlyList<string> PlainProcesses);

/// <summary>A host that takes part of the VM's memory and how many pages it may hold.</summary>
public sealed record Destination(string Host, long CapacityPages);

/// <summary>Pages per class.</summary>
public sealed record PageCounts(long Zero, long Plain, long Sealed)
{
    public long Total => Zero + Plain + Sealed;
}
