using MassTransit;
using SEmigrate.Contracts.Audit;
using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>The Temporal workflow's way to record a lifecycle event (workflow code does no I/O): sent to
/// its migration's audit queue, where the auditor appends it to the migration's stream, as the embedded
/// engine does itself. Every try sends it with the same message id, so the auditor appends it once.</summary>
public sealed class AuditActivities(IBus bus, AuditRoute audit)
{
    [Activity("RecordEvent")]
    public async Task RecordAsync(RecordEvent input)
    {
        var send = await bus.GetSendEndpoint(audit.AddressOf(input.Event.MigrationId));
        await send.Send((object)input.Event, context =>
        {
            if (input.MessageId is { } id)
            {
                context.MessageId = id;
            }
        }, ActivityExecutionContext.HasCurrent ? ActivityExecutionContext.Current.CancellationToken : CancellationToken.None);
    }
}
