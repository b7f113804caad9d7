using SEmigrate.Contracts.Migration;

namespace SEmigrate.Contracts.Audit;

// The embedded engine's journal, in the migration's stream beside its lifecycle events: what a
// restarted orchestrator replays the procedure against (Temporal's history, on Marten). A step is
// named by what it does and where (e.g. "transfer:sub-1:4096"), which the procedure determines, not
// by the order in which concurrent steps happened to end. Results are the steps' own records as JSON:
// small, and never a key or page data (a wrapped key is ciphertext for the main host alone).

/// <summary>An event of the engine's journal, as opposed to the migration's lifecycle.</summary>
public interface IJournalEvent : IMigrationEvent;

/// <summary>The engine took the migration on: the whole request, so that any orchestrator can resume it.</summary>
public sealed record MigrationAccepted(Guid MigrationId, MigrationRequest Request, DateTimeOffset At) : IJournalEvent;

/// <summary>A step was sent to <paramref name="Host"/> (first attempt; retries are the engine's own).</summary>
public sealed record StepScheduled(Guid MigrationId, string Step, string Host, DateTimeOffset At) : IJournalEvent;

/// <summary>A step answered: <paramref name="Result"/> is its output record as JSON.</summary>
public sealed record StepCompleted(Guid MigrationId, string Step, string Result, DateTimeOffset At) : IJournalEvent;

/// <summary>A step failed for good (refused, or out of attempts); <paramref name="Kind"/> as in StepRefused.</summary>
public sealed record StepFailed(Guid MigrationId, string Step, string Reason, DateTimeOffset At, string? Kind = null) : IJournalEvent;

/// <summary>The procedure returned (<paramref name="State"/>): nothing of the migration is left to drive.
/// Until then an orchestrator that died leaves it to be resumed, even after its switch-over (the source
/// has yet to let go of the key).</summary>
public sealed record ProcedureEnded(Guid MigrationId, MigrationState State, DateTimeOffset At) : IJournalEvent;

/// <summary>The operator cancelled the migration: a resumed procedure is cancelled at once, and undoes.</summary>
public sealed record CancelRequested(Guid MigrationId, string Reason, DateTimeOffset At) : IJournalEvent;
