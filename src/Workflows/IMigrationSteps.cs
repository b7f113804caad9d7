using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows;

/// <summary>Everything the migration procedure may do beyond computing: each step runs on the named
/// host (its retries, timeouts and heartbeats are the engine's business), plus time, waiting on
/// several steps at once and recording audit events. The Temporal workflow implements it with
/// activities; the embedded engine with requests to the hosts' workers.</summary>
public interface IMigrationSteps
{
    DateTimeOffset UtcNow { get; }

    Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps);

    /// <summary>Whether the procedure takes the path a change introduced (Temporal's patching: false only
    /// while replaying a history recorded before the change, which took the old path).</summary>
    bool Patched(string patchId);

    Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct);

    Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct);

    Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct);

    Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct);

    Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct);

    Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct);

    Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct);

    Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct);

    Task RecordAsync(IMigrationEvent e);
}
