using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
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
        foreach (var (key, value) in await ServicesScript.SettingsAsync())
        {
            Environment.SetEnvironmentVariable(key, value);
        }
        var queue = $"semigrate-audit-{Guid.NewGuid():N}"[..28];
        using var host = Orchestrator.Build(StepPolicies.Default, new Dictionary<string, string?> { ["Postgres:Schema"] = postgres.Schema, ["Audit:Queue"] = queue });
        await host.StartAsync(ct);
        try
        {
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
        finally
        {
            await host.StopAsync(CancellationToken.None);
            await WorkerFleet.DeleteQueuesAsync(new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]), [], [], queue);
        }
    }
}
