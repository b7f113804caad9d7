using MassTransit;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The Temporal workflow's way to record a lifecycle event (workflow code does no I/O): sent to
/// its migration's audit queue, where the auditor appends it to the migration's stream, as the embedded
/// engine does itself. Every try sends it with the same message id, so the auditor appends it once.
/// What it sends is signed with the orchestrator's auditor key, so it records only for a migration
/// workflow of a request the operator signed (or a drain order allows): a Temporal client that may start
/// workflows of its own gets no event about a migration nobody asked for signed.</summary>
public sealed class AuditActivities(IBus bus, AuditRoute audit, OperatorTrust trust)
{
    /// <summary>The workflow type whose events this activity records (MigrationWorkflow's, in the Workflows project).</summary>
    public const string MigrationWorkflowType = "SplitMigration";

    /// <summary>A migration workflow's id: its VM's, so one VM has one migration running at a time.</summary>
    public static string MigrationWorkflowId(Guid vm) => $"migration-{vm}";

    [Activity("RecordEvent")]
    public async Task RecordAsync(RecordEvent input)
    {
        if (ActivityExecutionContext.HasCurrent && Problem(input, ActivityExecutionContext.Current.Info, trust.PublicKey) is { } problem)
        {
            throw new ApplicationFailureException($"RecordEvent refused: {problem}", StepErrors.Denied, nonRetryable: true);
        }
        var send = await bus.GetSendEndpoint(audit.AddressOf(input.Event.MigrationId));
        await send.Send((object)input.Event, context =>
        {
            if (input.MessageId is { } id)
            {
                context.MessageId = id;
            }
        }, ActivityExecutionContext.HasCurrent ? ActivityExecutionContext.Current.CancellationToken : CancellationToken.None);
    }

    /// <summary>Why the workflow of <paramref name="info"/> may not have <paramref name="input"/> recorded;
    /// null when it may: a migration workflow (its id the VM's, as MigrationWorkflow.StartOptions makes
    /// it) recording an event of the migration its request, checked as a host checks it, allows.</summary>
    public static string? Problem(RecordEvent input, ActivityInfo info, byte[]? operatorKey)
    {
        if (operatorKey is null)
        {
            return "the orchestrator pins no operator key (setting Trust:OperatorKey), so it signs no event";
        }
        if (input.Request is not { } request)
        {
            return $"the {input.Event.GetType().Name} comes without the migration's signed request";
        }
        if (info.WorkflowType != MigrationWorkflowType || info.WorkflowId != MigrationWorkflowId(request.Vm))
        {
            return $"events are recorded for migration workflows only (migration-VM), not for {info.WorkflowType} {info.WorkflowId}";
        }
        if (input.Event.MigrationId != request.MigrationId)
        {
            return $"the event is of migration {input.Event.MigrationId}, its request of migration {request.MigrationId}";
        }
        // Expired requests too: a migration undone after its request expired still records how it ended.
        return StepGuard.RequestProblem(operatorKey, request.MigrationId, request.Vm, request, expiredToo: true);
    }
}
