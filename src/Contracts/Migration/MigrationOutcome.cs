namespace SEmigrate.Contracts.Migration;

/// <summary>Where a migration is.</summary>
public enum MigrationState
{
    Requested,
    Introspected,
    Placed,
    PagingStarted,
    Transferring,
    SwitchedOver,
    Compensated,
    Refused,
}

/// <summary>How a migration ended: switched over, or compensated / refused with the reason
/// (the VM then keeps running at the source). <paramref name="ManifestBytes"/>: what the hand-over put
/// on the page path besides the transfers. <paramref name="PausedAt"/>: when a running guest was paused
/// at the source; with the switch-over's ContinuedAt, its downtime (hosts' clocks in step assumed).
/// <paramref name="Unreachable"/>: a refused or undone migration's destination that had no worker to take
/// its step, so that a drain can place the VM elsewhere.</summary>
public sealed record MigrationOutcome(
    Guid MigrationId, MigrationState State, string? Reason, PageCounts? Pages,
    IReadOnlyList<TransferResult> Transfers, PlacementPlan? Placement, SwitchedOverResult? SwitchOver, long ManifestBytes = 0, DateTimeOffset? PausedAt = null,
    string? Unreachable = null)
{
    /// <summary>How long a running guest ran nowhere, when both ends are known.</summary>
    public TimeSpan? Downtime => SwitchOver?.ContinuedAt - PausedAt;
}

/// <summary>The progress query's answer: the state, each finished transfer and, on Temporal, the last
/// progress each transfer signalled (<paramref name="Live"/>, by host; a finished one's last says all sent).</summary>
public sealed record MigrationProgress(Guid MigrationId, MigrationState State, IReadOnlyList<TransferResult> Transfers, string? Reason,
    IReadOnlyList<TransferProgress>? Live = null);

/// <summary>The query/cancel signal's argument.</summary>
public sealed record CancelMigration(string Reason);
