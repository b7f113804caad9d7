using MassTransit;
using SEmigrate.Contracts.Audit;
using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>The Temporal workflow's way to publish a lifecycle event (workflow code does no I/O); the
/// auditor appends it to the migration's stream, as with the embedded engine.</summary>
public sealed class AuditActivities(IBus bus)
{
    [Activity("RecordEvent")]
    public Task RecordAsync(RecordEvent input) => bus.Publish((object)input.Event, ActivityExecutionContext.Current.CancellationToken);
}
