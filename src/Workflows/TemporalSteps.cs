using Microsoft.Extensions.Logging;
using SEmigrate.Activities;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using Temporalio.Api.Enums.V1;
using Temporalio.Common;
using Temporalio.Exceptions;
using Temporalio.Workflows;

namespace SEmigrate.Workflows;

/// <summary>The procedure's steps as Temporal activities, each on its host's task queue, with the
/// policy's retries, timeout and (for transfers) heartbeat timeout. Non-retryable failures (bad input,
/// wrong host) are marked so by the activities themselves.</summary>
internal sealed class TemporalSteps(StepPolicies policies, MigrationRequest request) : IMigrationSteps
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
        OnHost(host, Workflow.ExecuteActivityAsync((SourceActivities a) => a.MeasureAsync(input), Options(host, policies.Quick, ct, $"measure guest {input.Guest} at {host}")));

    public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((SourceActivities a) => a.IntrospectAsync(input), Options(host, policies.Introspect, ct,
            $"introspect and classify guest {input.Guest} at {host} (a running guest is paused from here)")));

    public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((PagingActivities a) => a.StartPagingAsync(input), Options(host, policies.Quick, ct,
            $"start paging VM {input.Vm} at {host}: room for {input.ExpectedPages} pages{(input.Round > 1 ? $", round {input.Round}" : "")}")));

    public Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((SourceActivities a) => a.TransferAsync(input), Options(host, policies.Transfer, ct,
            $"send {input.Assignment.Pages} pages [{input.Assignment.FirstPfn:x}, {input.Assignment.EndPfn:x}) to {input.Assignment.Host} ({input.Mode.ToWireName()}){(input.Round > 1 ? $", round {input.Round}" : "")}")));

    public Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((SourceActivities a) => a.HandOverAsync(input), Options(host, policies.Quick, ct, $"hand the manifest and the wrapped key to {input.Main}")));

    public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((MainHostActivities a) => a.SwitchOverAsync(input), Options(host, policies.SwitchOver, ct, $"switch VM {input.Vm} over to {host}")));

    public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((PagingActivities a) => a.ReleasePagingAsync(input), Options(host, Undo(policies.Quick), ct, $"release VM {input.Vm}'s pages at {host}")));

    public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct) =>
        OnHost(host, Workflow.ExecuteActivityAsync((SourceActivities a) => a.ReleaseSourceAsync(input), Options(host, Undo(policies.Quick), ct,
            input.VmLeft ? "the source drops the migration's key: the VM left" : "the source drops the migration's key: the VM stays")));

    /// <summary>Publishes the event (an activity on the orchestrator's queue), then shows the new state
    /// in the search attributes.</summary>
    public async Task RecordAsync(IMigrationEvent e)
    {
        var record = new RecordEvent(e, ++recorded, request); // the activity signs events only for a request the operator allowed
        await Workflow.ExecuteActivityAsync((AuditActivities a) => a.RecordAsync(record), new ActivityOptions
        {
            Summary = $"record {e.GetType().Name}",
            TaskQueue = MigrationWorkflow.OrchestratorQueue,
            CancellationToken = stopFirst ? CancellationToken.None : null,
            StartToCloseTimeout = policies.Quick.Timeout,
            RetryPolicy = new RetryPolicy { InitialInterval = policies.Quick.Backoff, MaximumAttempts = 0 }, // never lose an audit event
        });
        Workflow.Logger.LogInformation("migration {Migration}: {Event}", e.MigrationId, e.GetType().Name);
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

    /// <summary>A step no worker of its host took within <see cref="StepPolicy.StartWithin"/> fails as
    /// unreachable, naming the host (as the embedded engine's does), so that a drain can go elsewhere.</summary>
    private static async Task<T> OnHost<T>(string host, Task<T> step)
    {
        try
        {
            return await step;
        }
        catch (ActivityFailureException e) when (e.InnerException is TimeoutFailureException { TimeoutType: TimeoutType.ScheduleToStart })
        {
            // Not wrapped: the reason recorded is the innermost message, and this one names the host.
            throw new StepFailedException($"no worker of host {host} took the step in time (nothing polled {StepQueues.Host(host)}: its schedule-to-start bound passed)",
                StepErrors.Unreachable, host);
        }
    }

    /// <summary>A release waits longer for its host than a forward step (letting go of a key or of pages
    /// should happen, and a host restarting gets it), but not for ever: a paused guest's undo waits on the
    /// destinations' releases, and a host that never comes back is named in the reason instead.</summary>
    private static StepPolicy Undo(StepPolicy policy) => policy with { StartWithin = TimeSpan.FromMinutes(10) };

    /// <summary>The step's options; <paramref name="summary"/> is what the Web UI shows for it.</summary>
    private ActivityOptions Options(string host, StepPolicy policy, CancellationToken ct, string summary) => new()
    {
        Summary = summary,
        TaskQueue = StepQueues.Host(host),
        ScheduleToStartTimeout = policy.StartWithin,
        StartToCloseTimeout = policy.Timeout,
        HeartbeatTimeout = policy.Heartbeat,
        RetryPolicy = new RetryPolicy { InitialInterval = policy.Backoff, MaximumAttempts = policy.MaxAttempts },
        CancellationToken = ct,
        CancellationType = stopFirst ? ActivityCancellationType.WaitCancellationCompleted : ActivityCancellationType.TryCancel,
    };
}
