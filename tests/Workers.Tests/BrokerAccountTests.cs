using System.Diagnostics;
using System.Text.RegularExpressions;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using RabbitMQ.Client.Exceptions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Each host's worker logs in to the broker as a user of its own (deploy/services.sh host-user),
/// which may read, purge or delete none of another host's queues, nor the orchestrator's or the audit
/// trail's; what it must send to, it may only declare and send to.</summary>
public class BrokerAccountTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    /// <summary>The script's permission patterns against the names the code gives: every queue and exchange
    /// of the host's own in all three, none of another host's, the orchestrator's or anything shared in any;
    /// the default exchange to send to.</summary>
    [Fact]
    public async Task A_host_users_permissions_cover_its_own_names_and_nothing_else()
    {
        var (host, others) = ("main-ab12", new[] { "main-ab12-x", "sub1-ab12", "main", "ab12" });
        var (configure, write, read) = await PermissionsAsync(host);
        var vm = Guid.NewGuid();
        var token = PageQueues.Token(new byte[32]);
        var audit = new AuditRoute("semigrate-audit-1a2b", 4);
        string[] Names(string h) =>
        [
            StepQueues.Host(h), StepQueues.Host(h) + "_error", StepQueues.Host(h) + "_skipped", StepQueues.BusEndpoint(h), StepQueues.CancelEndpoint(h),
            StepQueues.CancelEndpoint(h) + "_error", StepQueues.CancelEntry(h), StepQueues.ProgressExit(h), .. audit.Queues.Select(q => StepQueues.AuditExit(h, q)),
            PageQueues.Control(h), PageQueues.Control(h) + ".dead",
            PageQueues.Bulk(h, vm), PageQueues.Fetch(h, vm), PageQueues.Bulk(h, vm, token), PageQueues.Fetch(h, vm, token),
        ];
        foreach (var own in Names(host))
        {
            Assert.True(configure.IsMatch(own) && write.IsMatch(own) && read.IsMatch(own), $"{host} cannot use its own {own}");
        }
        string[] notOwn =
        [
            .. others.SelectMany(Names), .. audit.Queues, StepQueues.OrchestratorBusEndpoint(), StepQueues.OrchestratorProgressEndpoint(),
            .. typeof(CancelSteps).Assembly.GetExportedTypes().Where(t => !t.IsGenericType && t.Namespace is not null).Select(t => $"{t.Namespace}:{t.Name}"),
            "MassTransit:Fault", "amq.direct", "amq.rabbitmq.trace",
        ];
        foreach (var theirs in notOwn)
        {
            Assert.False(configure.IsMatch(theirs) || write.IsMatch(theirs) || read.IsMatch(theirs), $"{host} may touch {theirs}");
        }
        Assert.True(write.IsMatch("amq.default") && !configure.IsMatch("amq.default") && !read.IsMatch("amq.default"));
    }

    /// <summary>A worker's own broker account, turned against the others on a live fleet: every attempt
    /// to read, purge, delete or take over a queue that is not its own is refused by the broker, and a
    /// migration run afterwards moves its guest with every page and its audit intact.</summary>
    [Fact]
    public async Task A_hosts_broker_account_cannot_take_purge_or_delete_anothers_queues()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var attackerUri = run.Fleet.BrokerUriOf(run.Sub1) ?? throw new InvalidOperationException("the fleet's workers have no broker users of their own");
        Assert.Contains($"semigrate-host-{run.Sub1}:", attackerUri, StringComparison.Ordinal);
        await using var attacker = await new ConnectionFactory { Uri = new Uri(attackerUri), ClientProvidedName = "attacker" }.CreateConnectionAsync(ct);
        var orchestratorBus = run.Host.Services.GetRequiredService<IBus>().Address.AbsolutePath.Split('/')[^1];
        var auditQueue = run.Host.Services.GetRequiredService<AuditRoute>().Queues.First();
        var (mainSteps, sub2Control) = (StepQueues.Host(run.Main), PageQueues.Control(run.Sub2));
        var rows = new List<(string Attack, int Tries, int Refused, int Lost)>();

        // A migration first: the workers do all they do under their own users, and the queues attacked below exist.
        var request = await run.SignAsync(run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000), ct);
        var outcome = await run.MigrateAsync(request, ct);
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
        Assert.True(verified.Ok, $"{verified}");
        await using var admin = await new ConnectionFactory { Uri = new Uri((await ServicesScript.SettingsAsync())[HostBrokerUsers.UriVariable]) }.CreateConnectionAsync(ct);
        string[] attacked = [mainSteps, sub2Control, sub2Control + ".dead", auditQueue];
        var before = await ConsumersAsync(admin, attacked);

        // The account works: its own step queue is there to it.
        await using (var own = await attacker.CreateChannelAsync(cancellationToken: ct))
        {
            Assert.True((await own.QueueDeclarePassiveAsync(StepQueues.Host(run.Sub1), ct)).ConsumerCount >= 1);
        }
        var tap = $"{StepQueues.Host(run.Sub1)}_skipped"; // a queue of its own to bind others' exchanges to
        await using (var own = await attacker.CreateChannelAsync(cancellationToken: ct))
        {
            await own.QueueDeclareAsync(tap, durable: true, exclusive: false, autoDelete: false, cancellationToken: ct);
        }

        await Row("consume another host's step queue", c => c.BasicConsumeAsync(mainSteps, true, new AsyncEventingBasicConsumer(c), ct));
        await Row("get from another host's step queue", c => c.BasicGetAsync(mainSteps, true, ct));
        await Row("purge another host's step queue", c => c.QueuePurgeAsync(mainSteps, ct));
        await Row("delete another host's step queue", c => c.QueueDeleteAsync(mainSteps, cancellationToken: ct));
        await Row("redeclare another host's step queue", c => c.QueueDeclareAsync(mainSteps, durable: false, exclusive: false, autoDelete: true, cancellationToken: ct));
        await Row("bind to another host's step exchange", c => c.QueueBindAsync(tap, mainSteps, "", cancellationToken: ct));
        await Row("consume a memory server's control queue", c => c.BasicConsumeAsync(sub2Control, true, new AsyncEventingBasicConsumer(c), ct));
        await Row("purge a memory server's control queue", c => c.QueuePurgeAsync(sub2Control, ct));
        await Row("delete a memory server's control queue", c => c.QueueDeleteAsync(sub2Control, cancellationToken: ct));
        await Row("delete a memory server's dead letters", c => c.QueueDeleteAsync(sub2Control + ".dead", cancellationToken: ct));
        // Steps' answers travel by direct reply-to, which only the asking channel can read; the orchestrator's
        // bus endpoint is refused on permission alone (it exists only once something uses it).
        await Row("consume the orchestrator's bus endpoint", c => c.BasicConsumeAsync(orchestratorBus, true, new AsyncEventingBasicConsumer(c), ct));
        await Row("bind to the orchestrator's bus exchange", c => c.QueueBindAsync(tap, orchestratorBus, "", cancellationToken: ct));
        await Row("consume an audit queue", c => c.BasicConsumeAsync(auditQueue, true, new AsyncEventingBasicConsumer(c), ct));
        await Row("purge an audit queue", c => c.QueuePurgeAsync(auditQueue, ct));
        await Row("delete an audit queue", c => c.QueueDeleteAsync(auditQueue, cancellationToken: ct));
        await Row("bind to another host's audit exit", c => c.QueueBindAsync(tap, StepQueues.AuditExit(run.Main, auditQueue), "", cancellationToken: ct));
        await Row("bind to another host's progress exit", c => c.QueueBindAsync(tap, StepQueues.ProgressExit(run.Source), "", cancellationToken: ct));
        await Row("delete another host's audit exit", c => c.ExchangeDeleteAsync(StepQueues.AuditExit(run.Main, auditQueue), cancellationToken: ct));
        await Row("delete the route of cancels (CancelSteps' exchange)", c => c.ExchangeDeleteAsync($"{typeof(CancelSteps).Namespace}:{nameof(CancelSteps)}", cancellationToken: ct));
        await Row("delete another host's cancel entry", c => c.ExchangeDeleteAsync(StepQueues.CancelEntry(run.Main), cancellationToken: ct));

        // Nothing lost: every queue attacked is there with the consumers it had, and the migration's audit holds.
        await using (var check = await attacker.CreateChannelAsync(cancellationToken: ct))
        {
            await check.QueueDeleteAsync(tap, cancellationToken: ct);
        }

        // Events forged straight into the audit queue through the default exchange (which a host may send
        // to): the auditor records a host's events only from that host's own broker user.
        var (mainHost, route, sub1User) = (run.Main, run.Host.Services.GetRequiredService<AuditRoute>(), $"semigrate-host-{run.Sub1}");
        StepDenied Denied() => new(Guid.NewGuid(), Guid.NewGuid(), mainHost, "Forged", "forged by another host", DateTimeOffset.UtcNow);
        var forged = new List<(int Row, Guid Stream, Func<object, bool> Is)>();
        foreach (var (attack, e, userId) in new (string, object, string?)[]
        {
            ("event for another host, no user id", Denied(), null),
            ("event for another host, own user id", Denied(), sub1User),
            ("host report for another host, own user id", new HostSeen(mainHost, ["main"], 424_242, 0, [], [], DateTimeOffset.UtcNow), sub1User),
            ("control plane's event (switch-over), own user id", new MigrationSwitchedOver(Guid.NewGuid(), mainHost, 1, 1, DateTimeOffset.UtcNow), sub1User),
        })
        {
            var stream = e is HostSeen seen ? HostStreams.Of(seen.Host) : ((IMigrationEvent)e).MigrationId;
            // A forged migration event has a stream of its own; the forged report, a capacity nobody has.
            forged.Add((rows.Count, stream, recorded => e is not HostSeen || recorded is HostSeen { CapacityPages: 424_242 }));
            await ForgedAsync(attack, route.QueueOf(stream), e, userId);
        }
        await Row("event with another user's id (the broker checks it)", async c =>
        {
            var (properties, body) = Envelope(Denied(), $"semigrate-host-{mainHost}");
            await c.BasicPublishAsync("", route.QueueOf(Guid.NewGuid()), false, properties, body, ct);
            await c.QueueDeclarePassiveAsync(StepQueues.Host(run.Sub1), ct); // the channel's next step meets the broker's refusal
        });
        await DrainedAsync(admin, [.. route.Queues], ct);
        await using (var query = run.Host.Services.GetRequiredService<Marten.IDocumentStore>().QuerySession())
        {
            foreach (var (row, stream, isForged) in forged)
            {
                var recorded = (await query.Events.FetchStreamAsync(stream, token: ct)).Any(x => isForged(x.Data));
                rows[row] = rows[row] with { Refused = recorded ? 0 : 1 };
            }
        }
        Assert.Equal(before, await ConsumersAsync(admin, attacked));
        await run.AssertAuditedAsync(request.MigrationId, ct);

        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"as {run.Sub1}'s broker user:");
        output?.WriteLine($"| {"attack",-56} | tries | refused | data lost |");
        foreach (var (attack, tries, refused, lost) in rows)
        {
            output?.WriteLine($"| {attack,-56} | {tries,5} | {refused,7} | {lost,9} |");
        }
        output?.WriteLine($"before them a migration moved its guest ({verified.Pages} pages checked); after them every queue attacked had its consumers ({string.Join(", ", before)}) and its audit passed");
        Assert.All(rows, x => Assert.Equal(x.Tries, x.Refused));

        async Task ForgedAsync(string attack, string queue, object e, string? userId)
        {
            await using var channel = await attacker.CreateChannelAsync(cancellationToken: ct);
            var (properties, body) = Envelope(e, userId);
            await channel.BasicPublishAsync("", queue, false, properties, body, ct);
            await channel.QueueDeclarePassiveAsync(StepQueues.Host(run.Sub1), ct); // taken by the broker
            rows.Add((attack, 1, 0, 0)); // refused once the auditor has seen it and recorded nothing
        }

        async Task Row(string attack, Func<IChannel, Task> act)
        {
            await using var channel = await attacker.CreateChannelAsync(cancellationToken: ct);
            ushort? code = null;
            try
            {
                await act(channel);
            }
            catch (OperationInterruptedException e)
            {
                code = e.ShutdownReason?.ReplyCode;
                TestContext.Current.TestOutputHelper?.WriteLine($"{attack}: {e.Message}");
            }
            // ACCESS_REFUSED (403); RESOURCE_LOCKED (405) for a queue exclusive to its process; PRECONDITION_FAILED
            // (406) for a message whose user id is not the sender's.
            Assert.True(code is 403 or 405 or 406, $"{attack}: the broker allowed it (reply {code})");
            rows.Add((attack, 1, 1, 0));
        }
    }

    /// <summary>A message as MassTransit sends it (its JSON envelope), with <paramref name="userId"/> as its
    /// broker user id when given.</summary>
    private static (BasicProperties Properties, byte[] Body) Envelope(object message, string? userId)
    {
        var id = Guid.NewGuid();
        var web = new System.Text.Json.JsonSerializerOptions(System.Text.Json.JsonSerializerDefaults.Web);
        var envelope = new Dictionary<string, object>
        {
            ["messageId"] = id, ["conversationId"] = Guid.NewGuid(), ["sentTime"] = DateTimeOffset.UtcNow,
            ["messageType"] = new[] { $"urn:message:{message.GetType().Namespace}:{message.GetType().Name}" },
            ["message"] = System.Text.Json.JsonSerializer.SerializeToElement(message, message.GetType(), web), ["headers"] = new Dictionary<string, object>(),
        };
        return (new BasicProperties { ContentType = "application/vnd.masstransit+json", MessageId = id.ToString(), UserId = userId },
            System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(envelope, web));
    }

    /// <summary>Waits until every queue is empty and a moment more (its auditor took the last message in hand).</summary>
    private static async Task DrainedAsync(IConnection admin, string[] queues, CancellationToken ct)
    {
        for (var i = 0; i < 200; i++)
        {
            var waiting = 0u;
            foreach (var queue in queues)
            {
                await using var channel = await admin.CreateChannelAsync(cancellationToken: ct);
                waiting += (await channel.QueueDeclarePassiveAsync(queue, ct)).MessageCount;
            }
            if (waiting == 0)
            {
                await Task.Delay(1000, ct);
                return;
            }
            await Task.Delay(100, ct);
        }
        throw new TimeoutException("the audit queues did not drain in 20 s");
    }

    /// <summary>How many consumers each queue has, or that its process holds it exclusively (the broker
    /// locks it even against a look); a queue gone throws.</summary>
    private static async Task<string[]> ConsumersAsync(IConnection admin, string[] queues)
    {
        var found = new List<string>();
        foreach (var queue in queues)
        {
            await using var channel = await admin.CreateChannelAsync();
            try
            {
                found.Add($"{(await channel.QueueDeclarePassiveAsync(queue)).ConsumerCount}");
            }
            catch (OperationInterruptedException e) when (e.ShutdownReason?.ReplyCode == 405)
            {
                found.Add("exclusive");
            }
        }
        return [.. found];
    }

    private static async Task<(Regex Configure, Regex Write, Regex Read)> PermissionsAsync(string host)
    {
        var start = new ProcessStartInfo("bash", [HostBrokerUsers.Script, "host-permissions", host]) { RedirectStandardOutput = true, UseShellExecute = false };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var lines = (await process.StandardOutput.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        await process.WaitForExitAsync();
        Assert.Equal(0, process.ExitCode);
        // RabbitMQ matches permissions as PCRE, unanchored; ours are anchored, with nothing .NET reads otherwise.
        return lines is [var c, var w, var r] ? (new Regex(c), new Regex(w), new Regex(r)) : throw new InvalidOperationException($"host-permissions printed {lines.Length} lines");
    }
}
