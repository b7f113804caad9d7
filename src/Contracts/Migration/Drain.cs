namespace SEmigrate.Contracts.Migration;

/// <summary>Host maintenance: migrate every guest off <paramref name="Host"/> (its source role's guests and
/// the running guests it took over as a main host),
/// placed across the other hosts the fleet inventory knows, at most <paramref name="MaxConcurrent"/>
/// migrations at a time, as the operator's signed <paramref name="Order"/> allows.</summary>
public sealed record DrainHost(Guid DrainId, string Host, MigrationMode Mode, IReadOnlyList<string> PlainProcesses, int MaxConcurrent = 2, DrainOrder? Order = null);

/// <summary>The drain's inventory activity's input: the host to drain.</summary>
public sealed record ReadInventory(string Host);

/// <summary>What the inventory says for a drain: the drained host's guests and every other host's room.</summary>
public sealed record DrainInventory(IReadOnlyList<DrainGuest> Guests, IReadOnlyList<DrainTarget> Hosts);

/// <summary>A guest on the drained host, <paramref name="Pages"/> 4 KiB pages of memory;
/// <paramref name="CannotMove"/> says why it cannot move at all (it stays, and the report says so);
/// <paramref name="HandOverPages"/>, what its hand-over stores at its main host besides its pages (0: unknown).</summary>
public sealed record DrainGuest(string Name, long Pages, bool Running, string? CannotMove = null, long HandOverPages = 0);

/// <summary>Another host: whether it can take a VM over (main role) and hold pages (main or sub), and its free room.</summary>
public sealed record DrainTarget(string Host, bool CanBeMain, bool CanHoldPages, long FreePages);

/// <summary>What a drain did: which guests moved where, and which did not and why.</summary>
public sealed record DrainReport(string Drained, IReadOnlyList<DrainMoved> Moved, IReadOnlyList<DrainNotMoved> NotMoved);

public sealed record DrainMoved(string Vm, Guid VmId, Guid MigrationId, string To, MigrationState State);

public sealed record DrainNotMoved(string Vm, string Reason);
