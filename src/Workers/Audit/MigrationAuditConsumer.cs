using System.Security.Cryptography;
using System.Text;
using Marten;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>The auditor: appends every lifecycle event to its migration's Marten stream. Its queue is
/// consumed one message at a time, so a stream keeps the order the orchestrator published in. A message
/// delivered twice (the broker redelivers what was not acknowledged before a crash) is appended once:
/// its content's digest is stored in the same transaction as the event. It records only events signed
/// by their sender (<see cref="EventSignatures"/>), and seals each (<see cref="AuditSeal"/>).</summary>
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
        var user = context.ReceiveContext.TryGetPayload<RabbitMqBasicConsumeContext>(out var rabbit) ? rabbit.Properties.UserId : null;
        var signer = context.Headers.Get<string>(EventSigner.SignerHeader);
        if ((AuditSenders.Refusal(user, e) ?? await signatures.ProblemAsync(user!, e, signer, context.Headers.Get<string>(EventSigner.SignatureHeader), context.CancellationToken))
            is { } refused)
        {
            await RefuseAsync(stream, e, user, signer, refused, context.CancellationToken);
            return;
        }
        // The same event twice (a redelivery, a retried activity, a signed event sent again) is recorded
        // once: by its stream and content, whatever its message id, so no id can take a real event's place.
        var digest = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(AuditChain.Content(e))));
        var key = $"{stream:N}/{digest}";
        if (await session.LoadAsync<RecordedMessage>(key, context.CancellationToken) is { } before)
        {
            if (await RecordedAsync(stream, before.Version, digest, context.CancellationToken))
            {
                return;
            }
            // A record of it without the event (written into the database): recorded now all the same.
            logger.LogWarning("audit: stream {Stream} has no sealed event {Version} for its record of a {Type}: recording it", stream, before.Version, e.GetType().Name);
        }
        var head = await AuditChain.AppendAsync(session, seal, stream, e, signer, context.CancellationToken); // a concurrent append fails the save: retried in place
        session.Store(new RecordedMessage(key, stream, head.Version));
        try
        {
            await session.SaveChangesAsync(context.CancellationToken);
        }
        catch (JasperFx.Events.Daemon.ApplyEventException x)
        {
            // No read model takes it (a stream that does not begin with its start): the same every time.
            session.EjectAllPendingChanges();
            await RefuseAsync(stream, e, user, signer, $"no stream takes it: {x.InnerException?.Message ?? x.Message}", context.CancellationToken);
            return;
        }
        seal.RecordHead(stream, head.Version, head.Hash);
    }

    /// <summary>An event not recorded is kept as it came, with why, and acknowledged: moving it to an error
    /// queue would resend it with its sender's broker user id, which the broker refuses from the auditor's
    /// connection, so it would come back for ever and hold up its queue.</summary>
    private async Task RefuseAsync(Guid stream, object e, string? user, string? signer, string problem, CancellationToken ct)
    {
        logger.LogWarning("audit: not recorded: {Refusal}", problem);
        session.Store(new RefusedEvent(Guid.NewGuid(), stream, e.GetType().Name, AuditChain.Content(e), user, signer, problem, DateTimeOffset.UtcNow));
        await session.SaveChangesAsync(ct);
    }

    /// <summary>Whether the stream's event at <paramref name="version"/> is this one, sealed.</summary>
    private async Task<bool> RecordedAsync(Guid stream, long version, string digest, CancellationToken ct)
    {
        var e = await session.Events.QueryAllRawEvents().Where(x => x.StreamId == stream && x.Version == version).FirstOrDefaultAsync(ct);
        return e is not null && AuditChain.Header(e, AuditChain.HashHeader) is { } hash
            && Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(AuditChain.Content(e.Data)))) == digest
            && seal.Problem(stream, version, hash, e.Headers) is null;
    }
}

/// <summary>An event the auditor records once: by its stream and the SHA-256 of its content; where it is.</summary>
public sealed record RecordedMessage(string Id, Guid Stream, long Version);

/// <summary>An event the auditor did not record (see <see cref="EventSignatures"/>), as it came: its stream, type and
/// content, the broker user that sent it, who it says signed it, and why it was refused.</summary>
public sealed record RefusedEvent(Guid Id, Guid Stream, string Type, string Content, string? User, string? Signer, string Problem, DateTimeOffset At);
