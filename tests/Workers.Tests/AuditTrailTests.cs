using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>The auditor on real RabbitMQ and PostgreSQL: events published with MassTransit end up, once
/// each and in order, in the migration's Marten stream, and the summary follows them.</summary>
public class AuditTrailTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_redelivered_event_is_recorded_once_and_the_summary_follows_the_stream()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await Auditor.StartAsync(postgres.Schema, ct);
        var host = auditor.Host;
        var bus = host.Services.GetRequiredService<IBus>();
        var migration = Guid.NewGuid();
        var requested = new MigrationRequested(migration, Guid.NewGuid(), "src", "main", ["a", "b"], "semigrate", DateTimeOffset.UtcNow);
        var messageId = NewId.NextGuid();
        await bus.Publish(requested, c => c.MessageId = messageId, ct);
        await bus.Publish(requested, c => c.MessageId = messageId, ct); // as the broker redelivers it
        await bus.Publish(new MigrationRefused(migration, "the destinations hold 3000 pages", DateTimeOffset.UtcNow), ct);

        var summary = await Orchestrator.AuditedEndAsync(host.Services, migration, TimeSpan.FromSeconds(30), ct);

        Assert.Equal(MigrationState.Refused, summary?.State);
        Assert.Equal("the destinations hold 3000 pages", summary!.Reason);
        Assert.Equal(["a", "b"], summary.SubHosts);
        await using var query = host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = await query.Events.FetchStreamAsync(migration, token: ct);
        Assert.Equal([typeof(MigrationRequested), typeof(MigrationRefused)], events.Select(e => e.Data.GetType()));
    }

    [Fact]
    public async Task Twenty_migrations_at_once_each_keep_their_order_and_chain()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await Auditor.StartAsync(postgres.Schema, ct);
        var host = auditor.Host;
        const int migrations = 20, each = 50;
        var bus = host.Services.GetRequiredService<IBus>();
        var ids = Enumerable.Range(0, migrations).Select(_ => Guid.NewGuid()).ToList();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // Interleaved, as twenty orchestrators would publish them; within a migration, in order.
        await Task.WhenAll(ids.Select(async id =>
        {
            await bus.Publish(new MigrationRequested(id, Guid.NewGuid(), "src", "main", ["sub"], "semigrate", DateTimeOffset.UtcNow), ct);
            for (var n = 1; n < each; n++)
            {
                await bus.Publish(new DestinationTransferred(id, "sub", n, n, 0, 0, 1, DateTimeOffset.UtcNow), ct);
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
        TestContext.Current.TestOutputHelper?.WriteLine($"auditor: {migrations * each} events of {migrations} migrations in {seconds:0.00} s: {migrations * each / seconds:0} events/s");

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
    }

    /// <summary>An orchestrator's auditor on a queue of the test's own, torn down with its queue.</summary>
    private sealed class Auditor(IHost host, string queue) : IAsyncDisposable
    {
        public IHost Host => host;

        public static async Task<Auditor> StartAsync(string schema, CancellationToken ct)
        {
            foreach (var (key, value) in await ServicesScript.SettingsAsync())
            {
                Environment.SetEnvironmentVariable(key, value);
            }
            var queue = $"semigrate-audit-{Guid.NewGuid():N}"[..28];
            var host = Orchestrator.Build(StepPolicies.Default, new Dictionary<string, string?> { ["Postgres:Schema"] = schema, ["Audit:Queue"] = queue });
            await host.StartAsync(ct);
            return new Auditor(host, queue);
        }

        public async ValueTask DisposeAsync()
        {
            await host.StopAsync(CancellationToken.None);
            host.Dispose();
            await WorkerFleet.DeleteQueuesAsync(new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]), [], [], queue);
        }
    }
}
