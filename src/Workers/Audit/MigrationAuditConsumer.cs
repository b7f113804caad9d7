using Marten;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>The auditor: appends every lifecycle event to its migration's Marten stream. Its queue is
/// consumed one message at a time, so a stream keeps the order the orchestrator published in. A message
/// delivered twice (the broker redelivers what was not acknowledged before a crash) is appended once:
/// its message id is stored in the same transaction as the event. It records only events signed by
/// their sender (<see cref="EventSignatures"/>), and seals each (<see cref="AuditSeal"/>).</summary>
public sealed class MigrationAuditConsumer(IDocumentSession session, AuditSeal seal, EventSignatures signatures, ILogger<MigrationAuditConsumer> logger) :
    IConsumer<MigrationRequested>, IConsumer<GuestIntrospected>, IConsumer<PagesClassified>, IConsumer<PagesPlaced>,
    IConsumer<PagingServersStarted>, IConsumer<DestinationTransferred>, IConsumer<DestinationLost>, IConsumer<MigrationSwitchedOver>,
    IConsumer<MigrationCompensated>, IConsumer<MigrationRefused>, IConsumer<PageCheckFailed>, IConsumer<StepDenied>, IConsumer<PagesUnavailable>, IConsumer<MigratedVmStopped>, IConsumer<VmPaged>, IConsumer<HostSeen>
{
    public Task Consume(ConsumeContext<MigrationRequested> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<GuestIntrospected> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<PagesClassified> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<PagesPlaced> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<PagingServersStarted> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<DestinationTransferred> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<DestinationLost> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<MigrationSwitchedOver> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<MigrationCompensated> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<MigrationRefused> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<PageCheckFailed> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<StepDenied> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<PagesUnavailable> context) => AppendAsync(context, context.Message);

    public Task Consume(ConsumeContext<MigratedVmStopped> context) => AppendAsync(context, context.Message);

    /// <summary>A host's report goes to the host's own stream (the fleet inventory).</summary>
    public Task Consume(ConsumeContext<HostSeen> context) => AppendAsync(context, HostStreams.Of(context.Message.Host), context.Message);

    /// <summary>Paging goes to the VM's own stream: it outlives the migration that brought the VM.</summary>
    public Task Consume(ConsumeContext<VmPaged> context) => AppendAsync(context, context.Message.Vm, context.Message);

    private Task AppendAsync(ConsumeContext context, IMigrationEvent e) => AppendAsync(context, e.MigrationId, e);

    private async Task AppendAsync(ConsumeContext context, Guid stream, object e)
    {
        var id = context.MessageId ?? throw new InvalidOperationException($"a {e.GetType().Name} without a message id cannot be recorded once");
        var user = context.ReceiveContext.TryGetPayload<RabbitMqBasicConsumeContext>(out var rabbit) ? rabbit.Properties.UserId : null;
        var signer = context.Headers.Get<string>(EventSigner.SignerHeader);
        if ((AuditSenders.Refusal(user, e) ?? await signatures.ProblemAsync(user!, e, signer, context.Headers.Get<string>(EventSigner.SignatureHeader), context.CancellationToken))
            is { } refused)
        {
            // Forged, or by nobody the broker knows: not recorded (nothing to redeliver).
            logger.LogWarning("audit: not recorded: {Refusal}", refused);
            return;
        }
        // A message id counts within its stream only: no message on another stream can take a real one's.
        var recorded = $"{stream:N}/{id:N}";
        if (await session.LoadAsync<RecordedMessage>(recorded, context.CancellationToken) is not null)
        {
            return; // recorded before the broker's redelivery
        }
        var head = await AuditChain.AppendAsync(session, seal, stream, e, signer, context.CancellationToken); // a concurrent append fails the save: retried in place
        session.Insert(new RecordedMessage(recorded, stream));
        await session.SaveChangesAsync(context.CancellationToken);
        seal.RecordHead(stream, head.Version, head.Hash);
    }
}

/// <summary>A message the auditor has recorded: its stream and MassTransit message id.</summary>
public sealed record RecordedMessage(string Id, Guid Stream);
