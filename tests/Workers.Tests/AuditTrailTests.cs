using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;

namespace SEmigrate.Workers.Tests;

/// <summary>The auditor on real RabbitMQ and PostgreSQL: events published with MassTransit end up, once
/// each and in order, in the migration's Marten stream, and the summary follows them.</summary>
public class AuditTrailTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_redelivered_event_is_recorded_once_and_the_summary_follows_the_stream()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var host = auditor.Host;
        var migration = Guid.NewGuid();
        var send = await auditor.SendEndpointAsync(migration);
        var requested = new MigrationRequested(migration, Guid.NewGuid(), "src", "main", ["a", "b"], "semigrate", DateTimeOffset.UtcNow);
        var messageId = NewId.NextGuid();
        await send.Send(requested, c => c.MessageId = messageId, ct);
        await send.Send(requested, c => c.MessageId = messageId, ct); // as the broker redelivers it
        await send.Send(new MigrationRefused(migration, "the destinations hold 3000 pages", DateTimeOffset.UtcNow), ct);

        var summary = await Orchestrator.AuditedEndAsync(host.Services, migration, TimeSpan.FromSeconds(30), ct);

        Assert.Equal(MigrationState.Refused, summary?.State);
        Assert.Equal("the destinations hold 3000 pages", summary!.Reason);
        Assert.Equal(["a", "b"], summary.SubHosts);
        await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = await query.Events.FetchStreamAsync(migration, token: ct);
        Assert.Equal([typeof(MigrationRequested), typeof(MigrationRefused)], events.Select(e => e.Data.GetType()));
    }

    [Fact]
    public async Task A_RecordEvent_activity_tried_twice_is_appended_once()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var activities = new AuditActivities(auditor.Host.Services.GetRequiredService<IBus>(), auditor.Host.Services.GetRequiredService<AuditRoute>());
        var migration = Guid.NewGuid();
        var requested = new RecordEvent(new MigrationRequested(migration, Guid.NewGuid(), "src", "main", ["a"], "semigrate", DateTimeOffset.UtcNow), 1);
        await activities.RecordAsync(requested);
        await activities.RecordAsync(requested); // Temporal retries the activity: the event's message id is the same
        await activities.RecordAsync(new RecordEvent(new MigrationRefused(migration, "no room", DateTimeOffset.UtcNow), 2));

        var summary = await Orchestrator.AuditedEndAsync(auditor.Host.Services, migration, TimeSpan.FromSeconds(30), ct);

        Assert.Equal(MigrationState.Refused, summary?.State);
        await using var query = auditor.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = await query.Events.FetchStreamAsync(migration, token: ct);
        Assert.Equal([typeof(MigrationRequested), typeof(MigrationRefused)], events.Select(e => e.Data.GetType()));
        Assert.NotEqual(requested.MessageId, new RecordEvent(requested.Event, 2).MessageId);
    }

    [Fact]
    public async Task Twenty_migrations_at_once_each_keep_their_order_and_chain_on_one_auditor_queue_or_eight()
    {
        // One queue (the whole fleet's events one at a time) against eight, alternated: the figures
        // are printed; the order and the chain must hold in every run.
        var rates = new List<string>();
        foreach (var partitions in new[] { 1, 8, 1, 8 })
        {
            rates.Add($"{partitions} queue{(partitions > 1 ? "s" : "")}: {await TwentyAtOnceAsync(partitions):0} events/s");
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"auditor, 1000 events of 20 migrations at once: {string.Join("; ", rates)}");
    }

    private async Task<double> TwentyAtOnceAsync(int partitions)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct, partitions);
        var host = auditor.Host;
        const int migrations = 20, each = 50;
        var ids = Enumerable.Range(0, migrations).Select(_ => Guid.NewGuid()).ToList();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // Interleaved, as twenty orchestrators would send them; within a migration, in order.
        await Task.WhenAll(ids.Select(async id =>
        {
            var send = await auditor.SendEndpointAsync(id);
            await send.Send(new MigrationRequested(id, Guid.NewGuid(), "src", "main", ["sub"], "semigrate", DateTimeOffset.UtcNow), ct);
            for (var n = 1; n < each; n++)
            {
                await send.Send(new DestinationTransferred(id, "sub", n, n, 0, 0, 1, DateTimeOffset.UtcNow), ct);
            }
        }));
        var store = host.Services.GetRequiredService<IDocumentStore>();
        var until = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            await using var query = store.QuerySession();
            var appended = await query.Events.QueryAllRawEvents().Where(e => e.StreamId.IsOneOf(ids.ToArray())).CountAsync(ct);
            if (appended == migrations * each)
            {
                break;
            }
            Assert.True(DateTime.UtcNow < until, $"{appended} of {migrations * each} events appended");
            await Task.Delay(50, ct);
        }
        var seconds = clock.Elapsed.TotalSeconds;

        await using (var query = store.QuerySession())
        {
            foreach (var id in ids)
            {
                var stream = await query.Events.FetchStreamAsync(id, token: ct);
                Assert.IsType<MigrationRequested>(stream[0].Data);
                Assert.Equal(Enumerable.Range(1, each - 1).Select(n => (long)n), stream.Skip(1).Select(e => ((DestinationTransferred)e.Data).Pages));
                Assert.Null(AuditChain.Verify(stream));
            }
        }
        return migrations * each / seconds;
    }
}
