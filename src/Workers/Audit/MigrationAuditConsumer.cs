using Marten;
using MassTransit;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>The auditor: appends every lifecycle event to its migration's Marten stream. Its queue is
/// consumed one message at a time, so a stream keeps the order the orchestrator published in.</summary>
public sealed class MigrationAuditConsumer(IDocumentSession session) :
    IConsumer<MigrationRequested>, IConsumer<GuestIntrospected>, IConsumer<PagesClassified>, IConsumer<PagesPlaced>,
    IConsumer<PagingServersStarted>, IConsumer<DestinationTransferred>, IConsumer<MigrationSwitchedOver>,
    IConsumer<MigrationCompensated>, IConsumer<MigrationRefused>
{
    public Task Consume(ConsumeContext<MigrationRequested> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<GuestIntrospected> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<PagesClassified> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<PagesPlaced> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<PagingServersStarted> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<DestinationTransferred> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<MigrationSwitchedOver> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<MigrationCompensated> context) => AppendAsync(context.Message, context.CancellationToken);

    public Task Consume(ConsumeContext<MigrationRefused> context) => AppendAsync(context.Message, context.CancellationToken);

    private async Task AppendAsync(IMigrationEvent e, CancellationToken ct)
    {
        session.Events.Append(e.MigrationId, e);
        await session.SaveChangesAsync(ct);
    }
}
