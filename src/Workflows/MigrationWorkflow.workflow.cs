using Microsoft.Extensions.Logging;
using SEmigrate.Activities;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using Temporalio.Client;
using Temporalio.Common;
using Temporalio.Workflows;

namespace SEmigrate.Workflows;

/// <summary>The split migration on Temporal: <see cref="MigrationProcedure"/> with activities on the task
/// queue of the host each step must run on. Query Progress; signal Cancel to stop and compensate.
/// Search attributes make migrations findable by VM, source, main host, mode and state.</summary>
[Workflow(AuditActivities.MigrationWorkflowType)]
public sealed class MigrationWorkflow
{
    /// <summary>Where the workflow and its audit activity run (the orchestrator's worker).</summary>
    public const string OrchestratorQueue = "semigrate-orchestrator";

    /// <summary>How a migration starts: its workflow id is its VM's (`migration-VM`), and starting one for a
    /// VM whose migration still runs fails (WorkflowAlreadyStartedException); once it closed, the VM may
    /// be migrated again under the same id.</summary>
    public static WorkflowOptions StartOptions(MigrationRequest request) => new(AuditActivities.MigrationWorkflowId(request.Vm), OrchestratorQueue)
    {
        StaticSummary = $"migrate VM {request.Vm} ({request.Guest}) from {request.Source} to {request.Main.Host}"
            + $"{string.Concat(request.SubHosts.Select(s => $" + {s.Host}"))}, {request.Mode.ToWireName()}",
        StaticDetails = $"migration {request.MigrationId}: the main host may take {request.Main.CapacityPages} pages; "
            + string.Join("; ", request.SubHosts.Select(s => $"{s.Host} {s.CapacityPages}"))
            + (request.PlainProcesses.Count > 0 ? $"; travels as-is (already encrypted): {string.Join(", ", request.PlainProcesses)}" : ""),
        IdConflictPolicy = Temporalio.Api.Enums.V1.WorkflowIdConflictPolicy.Fail,
        IdReusePolicy = Temporalio.Api.Enums.V1.WorkflowIdReusePolicy.AllowDuplicate,
    };

    public static readonly SearchAttributeKey<string> VmKey = SearchAttributeKey.CreateKeyword("SemigrateVm");
    public static readonly SearchAttributeKey<string> SourceKey = SearchAttributeKey.CreateKeyword("SemigrateSource");
    public static readonly SearchAttributeKey<string> MainKey = SearchAttributeKey.CreateKeyword("SemigrateMain");
    public static readonly SearchAttributeKey<string> ModeKey = SearchAttributeKey.CreateKeyword("SemigrateMode");
    public static readonly SearchAttributeKey<string> StateKey = SearchAttributeKey.CreateKeyword("SemigrateState");

    /// <summary>Every search attribute the workflow sets: the namespace must have them (`semigrate temporal setup`).</summary>
    public static readonly IReadOnlyList<SearchAttributeKey<string>> SearchAttributes = [VmKey, SourceKey, MainKey, ModeKey, StateKey];

    private readonly CancellationTokenSource cancel = new(); // the Cancel signal's
    private readonly SortedDictionary<string, TransferProgress> live = new(StringComparer.Ordinal);
    private MigrationProcedure? procedure;
    private Guid migrationId;

    [WorkflowRun]
    public async Task<MigrationOutcome> RunAsync(MigrationRequest request)
    {
        migrationId = request.MigrationId;
        Workflow.UpsertTypedSearchAttributes(
            VmKey.ValueSet(request.Vm.ToString()), SourceKey.ValueSet(request.Source), MainKey.ValueSet(request.Main.Host),
            ModeKey.ValueSet(request.Mode.ToWireName()), StateKey.ValueSet(nameof(MigrationState.Requested)));
        procedure = new MigrationProcedure(new TemporalSteps(StepPolicies.Default, request));
        // The Cancel signal, or a cancel from the Web UI or CLI (the workflow's own token): both end the same way.
        using var cancelled = CancellationTokenSource.CreateLinkedTokenSource(cancel.Token, Workflow.CancellationToken);
        Workflow.Logger.LogInformation("migration {Migration} of VM {Vm}: {Source} -> {Main} + {SubHosts} ({Mode})", request.MigrationId, request.Vm,
            request.Source, request.Main.Host, string.Join(", ", request.SubHosts.Select(s => s.Host)), request.Mode.ToWireName());
        var outcome = await procedure.RunAsync(request, cancelled.Token);
        Workflow.UpsertTypedSearchAttributes(StateKey.ValueSet(outcome.State.ToString()));
        Workflow.Logger.LogInformation("migration {Migration}: {State}{Reason}", request.MigrationId, outcome.State, outcome.Reason is null ? "" : $": {outcome.Reason}");
        return outcome;
    }

    [WorkflowQuery("Progress")]
    public MigrationProgress Progress() =>
        (procedure?.Progress ?? new MigrationProgress(migrationId, MigrationState.Requested, [], null)) with { Live = [.. live.Values] };

    /// <summary>Most hosts whose progress is kept: a VM has a main host and a few sub-hosts, and a signal
    /// from anyone else must not grow the workflow's state.</summary>
    private const int MaxLiveHosts = 64;

    /// <summary>A transfer's progress (its activity signals it, see the source's ProgressSignals): kept per
    /// host for <see cref="Progress"/>, a later round's or a further one replacing what was there.</summary>
    [WorkflowSignal(TransferProgress.Signal)]
    public Task TransferProgressedAsync(TransferProgress beat)
    {
        if ((migrationId == Guid.Empty || beat.MigrationId == migrationId)
            && (live.TryGetValue(beat.Host, out var was) ? (beat.Round, beat.NextPfn).CompareTo((was.Round, was.NextPfn)) >= 0 : live.Count < MaxLiveHosts))
        {
            live[beat.Host] = beat;
        }
        return Task.CompletedTask;
    }

    /// <summary>Stops the migration; what started is released and the VM stays at the source.</summary>
    [WorkflowSignal("Cancel")]
    public Task CancelAsync(CancelMigration input)
    {
        if (procedure is not null)
        {
            procedure.CancelReason = input.Reason;
        }
        cancel.Cancel();
        return Task.CompletedTask;
    }
}
