using System.Text.Json;
using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Npgsql;
using RabbitMQ.Client;
using SEmigrate.Contracts.Audit;
using SEmigrate.TestSupport;
using SEmigrate.Sealing;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Trust;

namespace SEmigrate.Workers.Tests;

/// <summary>The audit trail against those who can write where it is kept or sent: PostgreSQL's owner
/// (edits, re-hashes, cuts short, forges or moves events in the tables) and the control plane's shared
/// broker user (sends events, takes a real event's message id first). Every attack is on a stream the
/// auditor recorded, and must be refused by the auditor or found by the audit's checks.</summary>
public class AuditAnchorTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>
{
    private const int Tries = 10;
    private const int Events = 6;

    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    [Fact]
    public async Task The_database_owner_cannot_rewrite_a_stream_unnoticed()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var services = auditor.Host.Services;
        var (store, seal) = (services.GetRequiredService<IDocumentStore>(), services.GetRequiredService<AuditSeal>());
        await using var db = new NpgsqlConnection(services.GetRequiredService<IOptions<PostgresOptions>>().Value.ConnectionString);
        await db.OpenAsync(ct);
        var (events, streams) = ($"{postgres.Schema}.mt_events", $"{postgres.Schema}.mt_streams");
        var scratch = Directory.CreateTempSubdirectory("semigrate-attacker-");
        using var attackerSeal = AuditSeal.ForAuditor(new AuditOptions { KeyFile = Path.Combine(scratch.FullName, "key"), HeadsFolder = scratch.FullName }, postgres.Schema);
        using var otherSchema = AuditSeal.ForReader(new AuditOptions(), "another_schema");
        var rows = new List<(string Attack, int Tries, int Caught, int Lost)>();
        var output = TestContext.Current.TestOutputHelper;

        await Tampered("edit an event, re-hash the chain after it", async stream =>
        {
            await ExecuteAsync(db, $"update {events} set data = jsonb_set(data, '{{Problem}}', '\"nothing happened\"') where stream_id = $1 and version = 3", stream);
            await RehashAsync(stream);
        });
        await Tampered("change who raised an event", stream =>
            ExecuteAsync(db, $"update {events} set headers = headers || jsonb_build_object('signer', 'host:main') where stream_id = $1 and version = 2", stream));
        await Tampered("cut the stream short (its last 3 events)", async stream =>
        {
            await ExecuteAsync(db, $"delete from {events} where stream_id = $1 and version > {Events - 3}", stream);
            await ExecuteAsync(db, $"update {streams} set version = {Events - 3} where id = $1", stream);
        });
        await Tampered("delete the whole stream", async stream =>
        {
            await ExecuteAsync(db, $"delete from {events} where stream_id = $1", stream);
            await ExecuteAsync(db, $"delete from {streams} where id = $1", stream);
        });
        await Tampered("append an event chained right, sealed with its own key", async stream =>
        {
            await using var session = store.LightweightSession();
            await AuditChain.AppendAsync(session, attackerSeal, stream, new MigrationRefused(stream, "forged", DateTimeOffset.UtcNow), null, ct);
            await session.SaveChangesAsync(ct);
        });
        await Tampered("append an event chained right, with a seal copied from the event before", async stream =>
        {
            await using (var session = store.LightweightSession())
            {
                await AuditChain.AppendAsync(session, attackerSeal, stream, new MigrationRefused(stream, "forged", DateTimeOffset.UtcNow), null, ct);
                await session.SaveChangesAsync(ct);
            }
            await ExecuteAsync(db, $"update {events} e set headers = e.headers || jsonb_build_object('sealer', p.headers->>'sealer', 'seal', p.headers->>'seal') "
                + $"from {events} p where e.stream_id = $1 and p.stream_id = $1 and e.version = {Events + 1} and p.version = {Events}", stream);
        });
        await Tampered("replace its events with another stream's, sealed for that one", async stream =>
        {
            var other = await RecordAsync();
            await ExecuteAsync(db, $"delete from {events} where stream_id = $1", stream);
            await ExecuteAsync(db, $"update {events} set stream_id = $1 where stream_id = '{other}'", stream);
        });
        // The database owner writes the record that an event is in before it comes: it is recorded all the same.
        var (kept, lost) = (0, 0);
        for (var i = 0; i < Tries; i++)
        {
            var stream = await RecordAsync(1);
            var coming = new MigrationRefused(stream, "real", DateTimeOffset.UtcNow);
            var digest = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(AuditChain.Content(coming))));
            await using (var session = store.LightweightSession())
            {
                session.Store(new RecordedMessage($"{stream:N}/{digest}", stream, 1));
                await session.SaveChangesAsync(ct);
            }
            await (await auditor.SendEndpointAsync(stream)).Send(coming, ct);
            await WaitAsync(async () => (await EventsOf(stream)).Count >= 2, ct);
            (kept, lost) = (await EventsOf(stream)) is [MigrationRequested, MigrationRefused { Reason: "real" }] ? (kept + 1, lost) : (kept, lost + 1);
        }
        rows.Add(("write that a coming event is recorded, before it comes", Tries, kept, lost));

        Print(rows, "refused or found", "real events lost unnoticed");
        scratch.Delete(recursive: true);
        Assert.All(rows, r => Assert.True(r.Caught == r.Tries && r.Lost == 0, $"{r.Attack}: {r.Caught} of {r.Tries} found, {r.Lost} lost"));

        async Task Tampered(string attack, Func<Guid, Task> tamper)
        {
            var (caught, missed) = (0, 0);
            string? sample = null;
            for (var i = 0; i < Tries; i++)
            {
                var stream = await RecordAsync();
                Assert.Null(await FindingAsync(stream)); // as the auditor recorded it, every check holds
                // (and a copy sealed for another schema does not pass there)
                Assert.NotNull(AuditChain.Verify(await EventsWithHeadersOf(stream), otherSchema));
                await tamper(stream);
                var finding = await FindingAsync(stream);
                (caught, missed, sample) = finding is null ? (caught, missed + 1, sample) : (caught + 1, missed, sample ?? finding);
            }
            output?.WriteLine($"{attack}: {sample}");
            rows.Add((attack, Tries, caught, missed));
        }

        // What `semigrate audit` says of the stream's chain, seals and head; null when they hold.
        async Task<string?> FindingAsync(Guid stream) =>
            await MigrationAudit.RunAsync(store, seal, stream, ct) is not { } report ? "no stream"
            : report.Verdicts.FirstOrDefault(v => !v.Ok && v.Invariant is "hash chain" or "anchor")?.Detail;

        async Task<Guid> RecordAsync(int count = Events)
        {
            var stream = Guid.NewGuid();
            var send = await auditor.SendEndpointAsync(stream);
            await send.Send(Requested(stream), ct);
            for (var i = 1; i < count; i++)
            {
                await send.Send(new StepDenied(stream, stream, "main", "Transfer", $"try {i}", DateTimeOffset.UtcNow), ct);
            }
            await WaitAsync(async () => (await EventsOf(stream)).Count == count && seal.HeadOf(stream)?.Version == count, ct);
            return stream;
        }

        async Task<IReadOnlyList<object>> EventsOf(Guid stream) => [.. (await EventsWithHeadersOf(stream)).Select(e => e.Data)];

        async Task<IReadOnlyList<JasperFx.Events.IEvent>> EventsWithHeadersOf(Guid stream)
        {
            await using var query = store.QuerySession();
            return await query.Events.FetchStreamAsync(stream, token: ct);
        }

        // The chain made again over what the database now holds, as its owner can.
        async Task RehashAsync(Guid stream)
        {
            var previous = "";
            foreach (var e in (await EventsWithHeadersOf(stream)).OrderBy(e => e.Version))
            {
                var hash = AuditChain.Link(previous, e.Data);
                await ExecuteAsync(db, $"update {events} set headers = headers || jsonb_build_object('prev', '{previous}'::text, 'hash', '{hash}'::text) "
                    + $"where stream_id = $1 and version = {e.Version}", stream);
                previous = hash;
            }
        }
    }

    [Fact]
    public async Task The_control_planes_broker_user_has_nothing_recorded_and_nothing_recorded_twice()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var services = auditor.Host.Services;
        var (store, seal) = (services.GetRequiredService<IDocumentStore>(), services.GetRequiredService<AuditSeal>());
        var scratch = Directory.CreateTempSubdirectory("semigrate-attacker-");
        using var attacker = AuditSeal.ForAuditor(new AuditOptions { KeyFile = Path.Combine(scratch.FullName, "key"), HeadsFolder = scratch.FullName }, postgres.Schema);
        var settings = await ServicesScript.SettingsAsync();
        var uri = new Uri(settings["SEMIGRATE__RabbitMq__Uri"]);
        var user = Uri.UnescapeDataString(uri.UserInfo.Split(':')[0]);
        await using var broker = await new ConnectionFactory { Uri = uri, ClientProvidedName = "attacker" }.CreateConnectionAsync(ct);
        var route = services.GetRequiredService<AuditRoute>();
        var rows = new List<(string Attack, int Tries, int Caught, int Lost)>();
        var sent = 0;

        foreach (var (attack, sign) in new (string, Func<object, Dictionary<string, object>>)[]
        {
            ("an event, unsigned", _ => []),
            ("an event signed with its own key", e => Signed($"{EventSigner.AuditorPrefix}{attacker.Fingerprint}", attacker.Sign(EventSigner.Statement(e)))),
            ("an event with the auditor's signature of another event", _ => Signed($"{EventSigner.AuditorPrefix}{seal.Fingerprint}",
                seal.Sign(EventSigner.Statement(Requested(Guid.NewGuid()))))),
            ("an event signed as a host, by its own key", e => Signed($"{EventSigner.HostPrefix}main", attacker.Sign(EventSigner.Statement(e)))),
        })
        {
            var (refused, lost) = (0, 0);
            for (var i = 0; i < Tries; i++)
            {
                // The forged event, then a real one on the same stream (the same queue, after it): once the
                // real one is recorded, the forged one was taken and refused, or it would be there before it.
                var stream = Guid.NewGuid();
                var forged = Requested(stream);
                await PublishAsync(route.QueueOf(stream), forged, sign(forged), Guid.NewGuid());
                sent++;
                await Task.Delay(50, ct);
                await (await auditor.SendEndpointAsync(stream)).Send(new MigrationRefused(stream, "real", DateTimeOffset.UtcNow), ct);
                await WaitAsync(async () => (await EventsOf(stream)).Count >= 1, ct);
                var recorded = await EventsOf(stream);
                (refused, lost) = (refused + (recorded.Any(e => e is MigrationRequested) ? 0 : 1), lost + (recorded.Any(e => e is MigrationRefused) ? 0 : 1));
            }
            rows.Add((attack, Tries, refused, lost));
        }
        // A real event, signed, sent again (another message id, the same one, or both at once): recorded once.
        var (once, twice) = (0, 0);
        for (var i = 0; i < Tries; i++)
        {
            var stream = Guid.NewGuid();
            var e = Requested(stream);
            var signature = Signed($"{EventSigner.AuditorPrefix}{seal.Fingerprint}", seal.Sign(EventSigner.Statement(e))); // as it went on the wire
            await (await auditor.SendEndpointAsync(stream)).Send(e, ct);
            await PublishAsync(route.QueueOf(stream), e, signature, Guid.NewGuid());
            await PublishAsync(route.QueueOf(stream), e, signature, Guid.NewGuid());
            await (await auditor.SendEndpointAsync(stream)).Send(new MigrationRefused(stream, "real", DateTimeOffset.UtcNow), ct);
            await WaitAsync(async () => (await EventsOf(stream)).Any(x => x is MigrationRefused), ct);
            (once, twice) = (await EventsOf(stream)).Count(x => x is MigrationRequested) == 1 ? (once + 1, twice) : (once, twice + 1);
        }
        rows.Add(("a real event sent again with a new message id (a replay)", Tries, once, twice));

        // What was refused is kept, as it came and with why, for the operator to see.
        int kept;
        await using (var query = store.QuerySession())
        {
            kept = await query.Query<RefusedEvent>().CountAsync(ct);
        }
        Print(rows, "refused", "real events lost or doubled");
        TestContext.Current.TestOutputHelper?.WriteLine($"{kept} refused events kept ({sent} forged)");
        scratch.Delete(recursive: true);
        Assert.All(rows, r => Assert.True(r.Caught == r.Tries && r.Lost == 0, $"{r.Attack}: {r.Caught} of {r.Tries} refused, {r.Lost} lost or doubled"));
        Assert.Equal(sent, kept);

        async Task<IReadOnlyList<object>> EventsOf(Guid stream)
        {
            await using var query = store.QuerySession();
            return [.. (await query.Events.FetchStreamAsync(stream, token: ct)).Select(e => e.Data)];
        }

        async Task PublishAsync(string queue, object e, Dictionary<string, object> headers, Guid id)
        {
            await using var channel = await broker.CreateChannelAsync(cancellationToken: ct);
            var envelope = new Dictionary<string, object>
            {
                ["messageId"] = id, ["conversationId"] = Guid.NewGuid(), ["sentTime"] = DateTimeOffset.UtcNow,
                ["messageType"] = new[] { $"urn:message:{e.GetType().Namespace}:{e.GetType().Name}" },
                ["message"] = JsonSerializer.SerializeToElement(e, e.GetType(), Web), ["headers"] = headers,
            };
            var properties = new BasicProperties
            {
                ContentType = "application/vnd.masstransit+json", MessageId = id.ToString(), UserId = user,
                Headers = headers.ToDictionary(h => h.Key, h => (object?)h.Value),
            };
            await channel.BasicPublishAsync("", queue, false, properties, JsonSerializer.SerializeToUtf8Bytes(envelope, Web), ct);
        }
    }

    [Fact]
    public async Task The_database_owner_cannot_roll_an_enrolment_back_or_bring_a_revoked_host_back_and_a_foreign_enrolment_stops_nothing()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var auditor = await TestAuditor.StartAsync(postgres.Schema, ct);
        var store = auditor.Host.Services.GetRequiredService<IDocumentStore>();
        var folder = Directory.CreateTempSubdirectory("semigrate-operator-");
        OperatorKey.Create(Path.Combine(folder.FullName, "operator.key"));
        OperatorKey.Create(Path.Combine(folder.FullName, "other.key"));
        using var key = OperatorKey.Load(Path.Combine(folder.FullName, "operator.key"));
        using var other = OperatorKey.Load(Path.Combine(folder.FullName, "other.key"));
        var (rolledBack, revoked, foreign) = (0, 0, 0);
        string? sample = null;
        for (var i = 0; i < Tries; i++)
        {
            var host = $"rolled-{Guid.NewGuid():N}"[..20];
            using var first = HostKeyPair.Generate();
            using var second = HostKeyPair.Generate();
            var old = await OperatorAuthority.EnrolAsync(store, key, new HostIdentity(host, first.PublicKey), ct);
            await OperatorAuthority.EnrolAsync(store, key, new HostIdentity(host, second.PublicKey), ct); // its key replaced
            Assert.Equal(second.PublicKey, (await OperatorAuthority.PinAsync(store, key, [host], ct)).Single().HostKey);
            await PutBackAsync(old); // the older enrolment, signed by the operator too
            var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => OperatorAuthority.PinAsync(store, key, [host], ct));
            (rolledBack, sample) = (rolledBack + (refused.Message.Contains("rolled back", StringComparison.Ordinal) ? 1 : 0), refused.Message);

            var gone = $"revoked-{Guid.NewGuid():N}"[..20];
            var enrolment = await OperatorAuthority.EnrolAsync(store, key, new HostIdentity(gone, first.PublicKey), ct);
            Assert.True(await OperatorAuthority.RevokeAsync(store, key, gone, ct));
            await PutBackAsync(enrolment);
            var back = await Assert.ThrowsAsync<InvalidOperationException>(() => OperatorAuthority.PinAsync(store, key, [gone], ct));
            revoked += back.Message.Contains("was revoked", StringComparison.Ordinal) ? 1 : 0;

            // Another operator's host among them: every host of this operator's is still pinned, that one never.
            // (Nor the two above, whose enrolments were tampered with: named, each is refused, as above.)
            var (stranger, good) = ($"foreign-{Guid.NewGuid():N}"[..20], $"good-{Guid.NewGuid():N}"[..20]);
            await OperatorAuthority.EnrolAsync(store, other, new HostIdentity(stranger, second.PublicKey), ct);
            await OperatorAuthority.EnrolAsync(store, key, new HostIdentity(good, second.PublicKey), ct);
            var all = (await OperatorAuthority.PinAsync(store, key, null, ct)).Select(p => p.Host).ToList();
            await Assert.ThrowsAsync<InvalidOperationException>(() => OperatorAuthority.PinAsync(store, key, [stranger], ct));
            foreign += all.Contains(good) && !all.Contains(stranger) && !all.Contains(host) && !all.Contains(gone) ? 1 : 0;
        }
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"rolled back: {sample}");
        output?.WriteLine($"| {"attack",-60} | tries | refused |");
        output?.WriteLine($"| {"an older enrolment of a host put back in the database",-60} | {Tries,5} | {rolledBack,7} |");
        output?.WriteLine($"| {"a revoked host's enrolment put back",-60} | {Tries,5} | {revoked,7} |");
        output?.WriteLine($"| {"another operator's enrolment among this operator's hosts",-60} | {Tries,5} | {foreign,7} |");
        folder.Delete(recursive: true);
        Assert.Equal([Tries, Tries, Tries], [rolledBack, revoked, foreign]);

        async Task PutBackAsync(HostEnrolment e)
        {
            await using var session = store.LightweightSession();
            session.Store(e);
            await session.SaveChangesAsync(ct);
        }
    }

    private static void Print(List<(string Attack, int Tries, int Caught, int Lost)> rows, string caught, string lost)
    {
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"| {"attack",-60} | tries | {caught} | {lost} |");
        foreach (var (attack, tries, c, l) in rows)
        {
            output?.WriteLine($"| {attack,-60} | {tries,5} | {c.ToString(System.Globalization.CultureInfo.InvariantCulture).PadLeft(caught.Length)} | {l.ToString(System.Globalization.CultureInfo.InvariantCulture).PadLeft(lost.Length)} |");
        }
    }

    private static async Task WaitAsync(Func<Task<bool>> done, CancellationToken ct)
    {
        for (var i = 0; i < 300 && !await done(); i++)
        {
            await Task.Delay(100, ct);
        }
    }

    private static MigrationRequested Requested(Guid stream) => new(stream, Guid.NewGuid(), "src", "main", ["sub"], "semigrate", DateTimeOffset.UtcNow);

    private static Dictionary<string, object> Signed(string signer, byte[] signature) =>
        new() { [EventSigner.SignerHeader] = signer, [EventSigner.SignatureHeader] = Convert.ToBase64String(signature) };

    private static async Task ExecuteAsync(NpgsqlConnection db, string sql, Guid stream)
    {
        await using var command = new NpgsqlCommand(sql, db) { Parameters = { new() { Value = stream } } };
        await command.ExecuteNonQueryAsync(TestContext.Current.CancellationToken);
    }
}
