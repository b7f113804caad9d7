using SEmigrate.Contracts.Migration;

namespace SEmigrate.Contracts.Audit;

/// <summary>Where a migration is after one of its events: the one reading of that, for the audit trail's
/// read model and Temporal's search attribute alike.</summary>
public static class MigrationStates
{
    /// <summary>The state after <paramref name="e"/>, or null if it changes none. A guest introspected once
    /// paging started (it was paused for it) is being transferred from then on.</summary>
    public static MigrationState? After(IMigrationEvent e, MigrationState current) => e switch
    {
        GuestIntrospected => current == MigrationState.PagingStarted ? MigrationState.Transferring : MigrationState.Introspected,
        PagesPlaced => MigrationState.Placed,
        PagingServersStarted => MigrationState.PagingStarted,
        MigrationSwitchedOver => MigrationState.SwitchedOver,
        MigrationCompensated => MigrationState.Compensated,
        MigrationRefused => MigrationState.Refused,
        _ => null,
    };
}
