using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts;
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
        var activities = new AuditActivities(auditor.Host.Services.GetRequiredService<IBus>(), auditor.Host.Services.GetRequiredService<AuditRoute>(),
            new OperatorTrust(TestOperator.PublicKey));
        var migration = Guid.NewGuid();
        var request = SignedRequest(migration);
        var workflow = Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(request.Vm));
        var requested = new RecordEvent(new MigrationRequested(migration, request.Vm, "src", "main", ["a"], "semigrate", DateTimeOffset.UtcNow), 1, request);
        await workflow.RunAsync(() => activities.RecordAsync(requested));
        await workflow.RunAsync(() => activities.RecordAsync(requested)); // Temporal retries the activity: the event's message id is the same
        await workflow.RunAsync(() => activities.RecordAsync(new RecordEvent(new MigrationRefused(migration, "no room", DateTimeOffset.UtcNow), 2, request)));

        var summary = await Orchestrator.AuditedEndAsync(auditor.Host.Services, migration, TimeSpan.FromSeconds(30), ct);

        Assert.Equal(MigrationState.Refused, summary?.State);
        await using var query = auditor.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = await query.Events.FetchStreamAsync(migration, token: ct);
        Assert.Equal([typeof(MigrationRequested), typeof(MigrationRefused)], events.Select(e => e.Data.GetType()));
        Assert.NotEqual(requested.MessageId, new RecordEvent(requested.Event, 2).MessageId);
    }

    [Fact]
    public async Task A_workflow_of_a_Temporal_client_gets_no_event_signed_without_the_operators_request_for_it()
    {
        // A client with the namespace's credentials may start workflows of its own on the orchestrator's
        // queue and have them call RecordEvent, whose events the orchestrator signs: it is refused unless
        // the call comes from a migration workflow of that VM carrying the operator's request for it.
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var activities = new AuditActivities(auditor.Host.Services.GetRequiredService<IBus>(), auditor.Host.Services.GetRequiredService<AuditRoute>(),
            new OperatorTrust(TestOperator.PublicKey));
        using var stranger = Sealing.OperatorKey.Generate();
        var attacks = new (string Attack, Func<Guid, (RecordEvent, Temporalio.Testing.ActivityEnvironment)> Make)[]
        {
            ("no request", m => (Event(m, null), Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(Guid.Empty)))),
            ("request unsigned", m => Right(m, r => r with { Signature = null })),
            ("request signed by another operator", m => Right(m, r => Sealing.OperatorSignatures.Sign(r, stranger))),
            ("request altered after signing (another main)", m => Right(m, r => r with { Main = new Destination("evil", 1 << 20) })),
            ("event of another migration than the request", m => { var r = SignedRequest(Guid.NewGuid()); return (Event(m, r), Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(r.Vm))); }),
            ("from a workflow of another type", m => { var r = SignedRequest(m); return (Event(m, r), Workflow("Mine", AuditActivities.MigrationWorkflowId(r.Vm))); }),
            ("from a migration workflow of another VM", m => { var r = SignedRequest(m); return (Event(m, r), Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(Guid.NewGuid()))); }),
        };
        var rows = new List<(string Attack, int Tries, int Refused, int Recorded)>();
        foreach (var (attack, make) in attacks)
        {
            int refused = 0, recorded = 0;
            var migrations = Enumerable.Range(0, 5).Select(_ => Guid.NewGuid()).ToList();
            foreach (var m in migrations)
            {
                var (record, workflow) = make(m);
                var e = await Record.ExceptionAsync(() => workflow.RunAsync(() => activities.RecordAsync(record)));
                refused += e is Temporalio.Exceptions.ApplicationFailureException { ErrorType: StepErrors.Denied, NonRetryable: true } ? 1 : 0;
            }
            // A genuine event after them: recorded, so the auditor was listening and nothing forged went first.
            foreach (var m in migrations)
            {
                var request = SignedRequest(m);
                await Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(request.Vm))
                    .RunAsync(() => activities.RecordAsync(new RecordEvent(new MigrationRefused(m, "genuine", DateTimeOffset.UtcNow), 1, request)));
            }
            await using var query = auditor.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            foreach (var m in migrations)
            {
                await Orchestrator.AuditedEndAsync(auditor.Host.Services, m, TimeSpan.FromSeconds(30), ct);
                var events = await query.Events.FetchStreamAsync(m, token: ct);
                recorded += events.Count(e => e.Data is MigrationRequested);
                Assert.Equal(["genuine"], events.Select(e => e.Data).OfType<MigrationRefused>().Select(r => r.Reason));
            }
            rows.Add((attack, migrations.Count, refused, recorded));
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"{"attack (a Temporal client's own workflow calls RecordEvent)",-60} {"tries",5} {"refused",7} {"recorded",8}");
        foreach (var r in rows)
        {
            TestContext.Current.TestOutputHelper?.WriteLine($"{r.Attack,-60} {r.Tries,5} {r.Refused,7} {r.Recorded,8}");
        }
        Assert.All(rows, r => Assert.Equal((r.Tries, 0), (r.Refused, r.Recorded)));

        static RecordEvent Event(Guid m, MigrationRequest? r) =>
            new(new MigrationRequested(m, r?.Vm ?? Guid.NewGuid(), "src", "main", ["a"], "semigrate", DateTimeOffset.UtcNow), 1, r);

        static (RecordEvent, Temporalio.Testing.ActivityEnvironment) Right(Guid m, Func<MigrationRequest, MigrationRequest> forge)
        {
            var r = forge(SignedRequest(m));
            return (Event(m, r), Workflow(AuditActivities.MigrationWorkflowType, AuditActivities.MigrationWorkflowId(r.Vm)));
        }
    }

    private static MigrationRequest SignedRequest(Guid migration) => TestOperator.Sign(
        new MigrationRequest(migration, Guid.NewGuid(), "guest", "src", new Destination("main", 1000), [new Destination("a", 1000)], MigrationMode.Semigrate, []), []);

    /// <summary>An activity run as a call from the workflow <paramref name="type"/> <paramref name="id"/>.</summary>
    private static Temporalio.Testing.ActivityEnvironment Workflow(string type, string id) =>
        new() { Info = Temporalio.Testing.ActivityEnvironment.DefaultInfo with { WorkflowType = type, WorkflowId = id } };

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
