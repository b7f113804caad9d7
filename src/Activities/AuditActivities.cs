using MassTransit;
using SEmigrate.Contracts.Audit;
using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>The Temporal workflow's way to record a lifecycle event (workflow code does no I/O): sent to
/// its migration's audit queue, where the auditor appends it to the migration's stream, as the embedded
/// engine does itself.</summary>
public sealed class AuditActivities(IBus bus, AuditRoute audit)
{
    [Activity("RecordEvent")]
    public async Task RecordAsync(RecordEvent input) =>
        await (await bus.GetSendEndpoint(audit.AddressOf(input.Event.MigrationId))).Send((object)input.Event, ActivityExecutionContext.Current.CancellationToken);
}
