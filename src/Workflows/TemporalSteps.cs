using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using Temporalio.Common;
using Temporalio.Workflows;

namespace SEmigrate.Workflows;

/// <summary>The procedure's steps as Temporal activities, each on its host's task queue, with the
/// policy's retries, timeout and (for transfers) heartbeat timeout. Non-retryable failures (bad input,
/// wrong host) are marked so by the activities themselves.</summary>
internal sealed class TemporalSteps(StepPolicies policies) : IMigrationSteps
{
    public DateTimeOffset UtcNow => Workflow.UtcNow;

    public Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => Workflow.WhenAllAsync(steps);

    public bool Patched(string patchId)
    {
        var patched = Workflow.Patched(patchId);
        if (patched && patchId == MigrationProcedure.StepsStopBeforeUndo)
        {
            stopFirst = true; // the procedure asks first thing: every step from here on is cancelled that way
        }
        return patched;
    }

    /// <summary>Since <see cref="MigrationProcedure.StepsStopBeforeUndo"/>: a cancelled step's task ends only
    /// once its activity has stopped (transfers and the switch-over heartbeat, so they learn of it at once),
    /// and audit events are recorded even after a cancel from the UI or CLI (which cancels the workflow's
    /// own token, the default of every activity).</summary>
    private bool stopFirst;

    public Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((SourceActivities a) => a.MeasureAsync(input), Options(host, policies.Quick, ct));

    public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((SourceActivities a) => a.IntrospectAsync(input), Options(host, policies.Introspect, ct));

    public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((PagingActivities a) => a.StartPagingAsync(input), Options(host, policies.Quick, ct));

    public Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((SourceActivities a) => a.TransferAsync(input), Options(host, policies.Transfer, ct));

    public Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((SourceActivities a) => a.HandOverAsync(input), Options(host, policies.Quick, ct));

    public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((MainHostActivities a) => a.SwitchOverAsync(input), Options(host, policies.SwitchOver, ct));

    public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((PagingActivities a) => a.ReleasePagingAsync(input), Options(host, policies.Quick, ct));

    public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct) =>
        Workflow.ExecuteActivityAsync((SourceActivities a) => a.ReleaseSourceAsync(input), Options(host, policies.Quick, ct));

    /// <summary>Publishes the event (an activity on the orchestrator's queue), then shows the new state
    /// in the search attributes.</summary>
    public async Task RecordAsync(IMigrationEvent e)
    {
        var record = new RecordEvent(e, ++recorded);
        await Workflow.ExecuteActivityAsync((AuditActivities a) => a.RecordAsync(record), new ActivityOptions
        {
            TaskQueue = MigrationWorkflow.OrchestratorQueue,
            CancellationToken = stopFirst ? CancellationToken.None : null,
            StartToCloseTimeout = policies.Quick.Timeout,
            RetryPolicy = new RetryPolicy { InitialInterval = policies.Quick.Backoff, MaximumAttempts = 0 }, // never lose an audit event
        });
        if (MigrationStates.After(e, state) is { } after)
        {
            state = after;
            Workflow.UpsertTypedSearchAttributes(MigrationWorkflow.StateKey.ValueSet(state.ToString()));
        }
    }

    /// <summary>Events recorded so far: each one's sequence, from which its message id is made.</summary>
    private long recorded;

    /// <summary>The state the search attribute shows, as the audit trail's read model reads it.</summary>
    private MigrationState state = MigrationState.Requested;

    private ActivityOptions Options(string host, StepPolicy policy, CancellationToken ct) => new()
    {
        TaskQueue = StepQueues.Host(host),
        StartToCloseTimeout = policy.Timeout,
        HeartbeatTimeout = policy.Heartbeat,
        RetryPolicy = new RetryPolicy { InitialInterval = policy.Backoff, MaximumAttempts = policy.MaxAttempts },
        CancellationToken = ct,
        CancellationType = stopFirst ? ActivityCancellationType.WaitCancellationCompleted : ActivityCancellationType.TryCancel,
    };
}
