using System.Security.Cryptography;
using Marten;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Activities;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Sealing;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Trust;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Somebody on the broker sends the hosts' workers steps of their own making, as the embedded
/// engine's messages: each one a step that the operator's signed request does not allow. Every one is
/// refused, changes nothing (the source keeps its key, its guest and its state; the same steps as the request
/// allows them still work afterwards) and is in the audit trail as a StepDenied.</summary>
public class ForgedStepTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Every_forged_or_replayed_step_is_refused_recorded_and_changes_nothing()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var steps = run.Host.Services.GetRequiredService<IClientFactory>(); // answers by direct reply-to, as the engine's
        var r = await run.SignAsync(run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000), ct);
        var (id, vm) = (r.MigrationId, r.Vm);
        var rows = new List<(string Attack, int Tries, int Refused, int Lost)>();
        var streams = new HashSet<Guid> { id };

        // What the request allows, for the attacks to aim at: the guest introspected, the main host serving the VM.
        var found = await AllowedAsync<IntrospectGuest, IntrospectionResult>(r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, r.PlainProcesses, r));
        var started = await AllowedAsync<StartPaging, PagingStarted>(r.Main.Host, new StartPaging(id, vm, r.Main.Host, r.Mode, 30_000, 30_000, Request: r));
        var plan = Placement.Plan(found.ChunkGuestPages, found.ChunkPages, r.Main, r.SubHosts);
        var sourceState = new SourceState(new HostContext(r.Source, run.StateOf(r.Source)), id);
        Assert.True(sourceState.HasKey);
        using var attacker = HostKeyPair.Generate();
        var enrolled = await OperatorAuthority.PinAsync(run.Host.Services.GetRequiredService<IDocumentStore>(), OperatorKey.Load(TestOperator.KeyFile), null, ct);
        var sub1Key = enrolled.Single(p => p.Host == run.Sub1).HostKey;
        using var otherOperator = OperatorKey.Generate();
        var signedByAnother = OperatorSignatures.Sign(r, otherOperator);
        var altered = r with { Mode = MigrationMode.NoEnc }; // the operator's signature, over another mode

        await Row("wrap the data key for the attacker's key", r.Source, new HandOver(id, vm, r.Main.Host, attacker.PublicKey, r));
        await Row("wrap for another host's key (swapped PagingStarted key)", r.Source, new HandOver(id, vm, r.Main.Host, sub1Key, r));
        await Row("wrap for the main host named by an altered request", r.Source, new HandOver(id, vm, run.Sub1, sub1Key, r with { Main = r.Main with { Host = run.Sub1 } }));
        await Row("transfer to an unknown host", r.Source, new TransferPages(id, vm, r.Mode, plan.Assignments[0] with { Host = "attacker" }, 0, 1, null, Request: r));
        await Row("transfer of another host's range", r.Source, new TransferPages(id, vm, r.Mode, plan.Assignments[0] with { Host = run.Sub2 }, 0, 1, null, Request: r));
        await Row("channel key wrapped for a key a reply swapped in", r.Source,
            new TransferPages(id, vm, r.Mode, plan.Assignments.First(x => x.Host != r.Main.Host), 0, 1, attacker.PublicKey, Request: r));
        await Row("noenc forced on the transfer", r.Source, new TransferPages(id, vm, MigrationMode.NoEnc, plan.Assignments[0], 0, 1, null, Request: r));
        await Row("noenc forced in the request (signature kept)", r.Source, new TransferPages(id, vm, MigrationMode.NoEnc, plan.Assignments[0], 0, 1, null, Request: altered));
        await Row("paging started in noenc", r.Main.Host, new StartPaging(id, vm, r.Main.Host, MigrationMode.NoEnc, 10, 10, Request: r));
        await Row("request signed by another operator", r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, r.PlainProcesses, signedByAnother));
        await Row("step without a request", r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, r.PlainProcesses));
        await Row("plain processes widened", r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, [.. r.PlainProcesses, "sshd"], r));
        var foreignId = Guid.NewGuid();
        streams.Add(foreignId);
        await Row("foreign switch-over (forged request)", r.Main.Host,
            new SwitchOver(foreignId, vm, r.Main.Host, r.Mode, KeyWrap.Wrap(DataKey.Generate(), started.HostKey!, "x"), plan, Request: r with { MigrationId = foreignId }));
        await Row("foreign switch-over (another operator)", r.Main.Host,
            new SwitchOver(id, vm, r.Main.Host, r.Mode, KeyWrap.Wrap(DataKey.Generate(), started.HostKey!, "x"), plan, Request: signedByAnother));
        await Row("foreign release: the VM left, without a receipt", r.Source, new ReleaseSource(id, vm, VmLeft: true, r));
        await Row("foreign release: the VM left, forged receipt", r.Source, new ReleaseSource(id, vm, VmLeft: true, r, Convert.ToHexString(RandomNumberGenerator.GetBytes(32))));
        await Row("foreign release of paging (another operator)", r.Main.Host, new ReleasePaging(id, vm, r.Main.Host, signedByAnother));
        var expired = Expired(r);
        await Row("replay of an expired signed request", r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, r.PlainProcesses, expired));
        // Digests of the guest's memory: only for the signed request, only within the VM, only as MACs.
        var pages = (long)found.PfnLimit;
        await Row("memory digest without a request", r.Source, new DigestMemory(id, vm, r.Source, 0, pages, 256), tries: 5);
        await Row("memory digest, one page per chunk, without a request", r.Source, new DigestMemory(id, vm, r.Source, 0, Math.Min(pages, 4096), 1), tries: 5);
        await Row("memory digest of 2^47 pages", r.Source, new DigestMemory(id, vm, r.Source, 0, 1L << 47, int.MaxValue, r), tries: 5); // 65536 chunks
        await Row("memory digest signed by another operator", r.Source, new DigestMemory(id, vm, r.Source, 0, pages, 256, signedByAnother), tries: 5);
        // A nonce shaped like page records (nonce, page number, a guess's SHA-256) would have made one check's
        // MAC of two pages equal another's of one page exactly when the guess was right: nonces are 16 bytes.
        await Row("memory digest with a nonce shaped to test a guess", r.Source,
            new DigestMemory(id, vm, r.Source, 1, 2, 1, r, [.. new byte[16], .. BitConverter.GetBytes(0L), .. SHA256.HashData(new byte[4096])]), tries: 5);
        // With the request, one page per chunk: the free pages (zeros here, most of the guest) digest neither
        // as a plain hash anyone could compute (SHA-256 of the page's SHA-256, as the digests were before) nor
        // alike (a page's MAC covers its number), and a second check's (another nonce) match none of the first's.
        var range = Math.Min(pages, 1 << 16);
        var perPage = await AllowedAsync<DigestMemory, MemoryDigest>(r.Source, new DigestMemory(id, vm, r.Source, 0, range, 1, r, RandomNumberGenerator.GetBytes(16)));
        var again = await AllowedAsync<DigestMemory, MemoryDigest>(r.Source, new DigestMemory(id, vm, r.Source, 0, range, 1, r, RandomNumberGenerator.GetBytes(16)));
        var plainZero = Convert.ToHexStringLower(SHA256.HashData(SHA256.HashData(new byte[4096])).AsSpan(0, 16));
        Assert.True(perPage.Pages > range / 2, $"{perPage.Pages} guest pages digested");
        Assert.DoesNotContain(plainZero, perPage.Chunks);
        Assert.Equal(perPage.Chunks.Count, perPage.Chunks.Distinct().Count());
        Assert.Empty(perPage.Chunks.Intersect(again.Chunks));
        // Each digest pages the whole range in at a main host: a request's holder gets a few passes over the
        // VM's memory at once, then one more every 30 s; the rest are refused.
        var (allowedPasses, pastBudget) = (0, 0);
        for (var i = 0; i < 12; i++)
        {
            var reason = await RefusalAsync<DigestMemory, MemoryDigest>(r.Source, new DigestMemory(id, vm, r.Source, 0, pages, 256, r, RandomNumberGenerator.GetBytes(16)));
            (allowedPasses, pastBudget) = reason is null ? (allowedPasses + 1, pastBudget) : (allowedPasses, pastBudget + 1);
            Assert.True(reason is null || reason.Contains("digested too often", StringComparison.Ordinal), reason);
        }
        var passesBefore = (double)range / pages * 2; // the two per-page digests above
        Assert.InRange(allowedPasses, (int)(StepGuard.DigestBurst - passesBefore), (int)(StepGuard.DigestBurst - passesBefore) + 2); // + what refilled meanwhile
        rows.Add(($"memory digests past the budget ({allowedPasses} of 12 whole passes taken)", 12 - allowedPasses, pastBudget, 0));

        // Nothing changed: the source still has its key, and the steps as the request allows them still work.
        var lostKey = sourceState.HasKey ? 0 : 1;
        var handedOver = await AllowedAsync<HandOver, HandedOver>(r.Source, new HandOver(id, vm, r.Main.Host, started.HostKey!, r, started.ForSource));
        Assert.NotEmpty(handedOver.WrappedKey);
        // The main host takes a data key only as the source's wrap for this hand-over: not one an attacker
        // wrapped for it (with which blobs of the attacker's own would open), nor the source's claimed for another epoch.
        using (var attackersKey = DataKey.Generate())
        {
            var context = SourceActivities.KeyContext(id, vm, r.Main.Host, handedOver.Epoch!.Value, handedOver.ManifestDigest!);
            await Row("switch-over with a key the attacker wrapped for the main host", r.Main.Host,
                new SwitchOver(id, vm, r.Main.Host, r.Mode, KeyWrap.WrapFrom(attackersKey, attacker, started.HostKey!, context), plan, r.Guest, r,
                    Epoch: handedOver.Epoch.Value, ManifestDigest: handedOver.ManifestDigest), tries: 5);
        }
        await Row("switch-over with the source's key claimed for another hand-over", r.Main.Host,
            new SwitchOver(id, vm, r.Main.Host, r.Mode, handedOver.WrappedKey, plan, r.Guest, r, Epoch: handedOver.Epoch.Value + 1, ManifestDigest: handedOver.ManifestDigest), tries: 5);
        // The migration undone as the request allows; replaying its steps after that is refused too.
        // The key went to the main host: the source undoes only on that host's word that it declined the VM.
        await Row("undo at the source after the hand-over, without the main host's word", r.Source, new ReleaseSource(id, vm, VmLeft: false, r), tries: 5);
        await Row("undo with a word made up by another host", r.Source,
            new ReleaseSource(id, vm, VmLeft: false, r, Convert.ToHexString(attacker.Vouch(enrolled.Single(p => p.Host == r.Source).HostKey,
                TakeOvers.DeclinedStatement(id, vm, r.Main.Host)))), tries: 5);
        var declined = await AllowedAsync<ReleasePaging, PagingReleased>(r.Main.Host, new ReleasePaging(id, vm, r.Main.Host, r));
        Assert.NotNull(declined.Declined);
        await Row("switch-over after the main host declined the VM", r.Main.Host,
            new SwitchOver(id, vm, r.Main.Host, r.Mode, handedOver.WrappedKey, plan, r.Guest, r, Epoch: handedOver.Epoch.Value, ManifestDigest: handedOver.ManifestDigest));
        await AllowedAsync<ReleaseSource, SourceReleased>(r.Source, new ReleaseSource(id, vm, VmLeft: false, r, declined.Declined));
        await Row("replay of a signed request after it ended", r.Source, new IntrospectGuest(id, vm, r.Guest, r.Mode, r.PlainProcesses, r));
        await Row("replay of its hand-over after it ended", r.Source, new HandOver(id, vm, r.Main.Host, started.HostKey!, r, started.ForSource));
        await Row("replay of paging started after it ended", r.Main.Host, new StartPaging(id, vm, r.Main.Host, r.Mode, 30_000, 30_000, Request: r));

        // Every refusal is in the audit trail as a security event.
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var refusals = rows.Sum(x => x.Refused);
        var denied = 0;
        for (var i = 0; i < 100 && denied < refusals; i++)
        {
            denied = 0;
            foreach (var stream in streams)
            {
                denied += (await query.Events.FetchStreamAsync(stream, token: ct)).Count(e => e.Data is StepDenied);
            }
            await Task.Delay(100, ct);
        }
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"| {"attack",-56} | tries | refused | data lost |");
        foreach (var (attack, tries, refused, lost) in rows)
        {
            output?.WriteLine($"| {attack,-56} | {tries,5} | {refused,7} | {lost,9} |");
        }
        output?.WriteLine($"StepDenied events in the audit trail: {denied} of {refusals} refusals; source key kept through them: {lostKey == 0}");
        Assert.All(rows, x => Assert.Equal(x.Tries, x.Refused));
        Assert.Equal(0, lostKey);
        Assert.Equal(refusals, denied);

        async Task Row(string attack, string host, object step, int tries = 1)
        {
            for (var i = 0; i < tries; i++)
            {
                await RefusedAsync(attack, host, step);
            }
            rows.Add((attack, tries, tries, 0)); // each try was asserted refused
        }

        async Task RefusedAsync(string attack, string host, object step)
        {
            var reason = step switch
            {
                DigestMemory x => await RefusalAsync<DigestMemory, MemoryDigest>(host, x),
                IntrospectGuest x => await RefusalAsync<IntrospectGuest, IntrospectionResult>(host, x),
                StartPaging x => await RefusalAsync<StartPaging, PagingStarted>(host, x),
                TransferPages x => await RefusalAsync<TransferPages, TransferResult>(host, x),
                HandOver x => await RefusalAsync<HandOver, HandedOver>(host, x),
                SwitchOver x => await RefusalAsync<SwitchOver, SwitchedOverResult>(host, x),
                ReleasePaging x => await RefusalAsync<ReleasePaging, PagingReleased>(host, x),
                ReleaseSource x => await RefusalAsync<ReleaseSource, SourceReleased>(host, x),
                _ => throw new ArgumentException($"no step {step.GetType().Name}"),
            };
            Assert.True(reason is not null, $"{attack}: the step was taken");
            Assert.Contains("refused", reason, StringComparison.Ordinal);
        }

        Task<TOut> AllowedAsync<T, TOut>(string host, T step) where T : class where TOut : class => Allowed<T, TOut>(steps, host, step, ct);

        Task<string?> RefusalAsync<T, TOut>(string host, T step) where T : class where TOut : class => Refusal<T, TOut>(steps, host, step, ct);

        static MigrationRequest Expired(MigrationRequest request)
        {
            using var key = OperatorKey.Load(TestOperator.KeyFile);
            return OperatorSignatures.Sign(request with { NotAfter = DateTimeOffset.UtcNow.AddMinutes(-1) }, key);
        }
    }

    /// <summary>The step's answer, as the engine gets it; a refusal fails the test.</summary>
    private static async Task<TOut> Allowed<T, TOut>(IClientFactory steps, string host, T step, CancellationToken ct) where T : class where TOut : class
    {
        var response = await steps.CreateRequestClient<T>(new Uri($"queue:{StepQueues.Host(host)}"), RequestTimeout.After(s: 120)).GetResponse<TOut, StepRefused>(step, ct);
        return response.Is(out Response<TOut>? done) ? done.Message
            : response.Is(out Response<StepRefused>? refused) ? throw new InvalidOperationException($"{typeof(T).Name} refused: {refused.Message.Reason}")
            : throw new InvalidOperationException("no answer");
    }

    /// <summary>The refusal's reason; null when the step was taken.</summary>
    private static async Task<string?> Refusal<T, TOut>(IClientFactory steps, string host, T step, CancellationToken ct) where T : class where TOut : class
    {
        var response = await steps.CreateRequestClient<T>(new Uri($"queue:{StepQueues.Host(host)}"), RequestTimeout.After(s: 120)).GetResponse<TOut, StepRefused>(step, ct);
        return response.Is(out Response<StepRefused>? refused) ? refused.Message.Reason : null;
    }

    [Fact]
    public async Task Under_a_drain_order_no_host_it_does_not_name_as_main_is_one_and_a_guest_moves_in_one_migration_at_a_time()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        await run.FleetOnceAsync(run.AllReported, "every host reported its roles", ct);
        var steps = run.Host.Services.GetRequiredService<IClientFactory>();
        var order = (await run.OrderAsync(new DrainHost(Guid.NewGuid(), run.Source, MigrationMode.Semigrate, ["vaultdb"]), ct)).Order!;
        Assert.Contains(run.Main, order.MainHosts!);
        Assert.DoesNotContain(run.Sub1, order.MainHosts!);
        Assert.Contains(order.Hosts, h => h.Host == run.Sub1); // it may hold pages
        var guestName = Path.GetFileName(guest.Guest.Directory);
        MigrationRequest Under(Destination main, Destination sub) =>
            new(Guid.NewGuid(), Guid.NewGuid(), guestName, run.Source, main, [sub], MigrationMode.Semigrate, ["vaultdb"], Order: order);
        var rows = new List<(string Attack, int Tries, int Refused)>();
        // Refused, for the reason the attack is about (not some other).
        async Task Row(string attack, string why, Func<MigrationRequest, Task<string?>> step, Func<MigrationRequest> request, int tries = 5)
        {
            var refused = 0;
            for (var i = 0; i < tries; i++)
            {
                refused += await step(request()) is { } reason && reason.Contains("refused", StringComparison.Ordinal) && reason.Contains(why, StringComparison.Ordinal) ? 1 : 0;
            }
            rows.Add((attack, tries, refused));
        }
        const string NotMain = "as a main host";

        // A sub-host of the drain names itself main: every host it would need refuses.
        Func<MigrationRequest> hijack = () => Under(new Destination(run.Sub1, 60_000), new Destination(run.Sub2, 30_000));
        await Row("measure, a pages-only host of the order as main", NotMain, r => Refusal<MeasureGuest, GuestLayout>(steps, run.Source, new MeasureGuest(r.MigrationId, r.Vm, r.Guest, r), ct), hijack);
        await Row("introspect, a pages-only host as main", NotMain, r => Refusal<IntrospectGuest, IntrospectionResult>(steps, run.Source,
            new IntrospectGuest(r.MigrationId, r.Vm, r.Guest, r.Mode, r.PlainProcesses, r), ct), hijack);
        await Row("paging started at a pages-only host as main", NotMain, r => Refusal<StartPaging, PagingStarted>(steps, run.Sub1,
            new StartPaging(r.MigrationId, r.Vm, run.Sub1, r.Mode, 100, 100, Request: r), ct), hijack);
        await Row("hand-over to a pages-only host as main", NotMain, r => Refusal<HandOver, HandedOver>(steps, run.Source,
            new HandOver(r.MigrationId, r.Vm, run.Sub1, order.Hosts.Single(h => h.Host == run.Sub1).HostKey, r), ct), hijack);

        // Room at a destination only for what the source measured and placed there for that very migration,
        // and for one migration of the guest under the order at a time, at the source and at each destination.
        Task<GuestLayout> Measure(MigrationRequest r) => Allowed<MeasureGuest, GuestLayout>(steps, run.Source, new MeasureGuest(r.MigrationId, r.Vm, r.Guest, r), ct);
        StartPaging Paging(MigrationRequest r, SourceVouch? measured, long pages) => new(r.MigrationId, r.Vm, run.Main, r.Mode, pages, pages, Request: r, Measured: measured);
        Task<SourceReleased> Undo(MigrationRequest r) => Allowed<ReleaseSource, SourceReleased>(steps, run.Source, new ReleaseSource(r.MigrationId, r.Vm, VmLeft: false, r), ct);
        Func<MigrationRequest> toMain = () => Under(new Destination(run.Main, 60_000), new Destination(run.Sub1, 30_000));
        var measured = toMain();
        var vouch = (await Measure(measured)).Vouches![run.Main];
        await Row("paging for a made-up migration the source never measured", "only with the source's word", r => Refusal<StartPaging, PagingStarted>(steps, run.Main,
            Paging(r, null, 1000), ct), toMain);
        await Row("paging with the source's word for another migration", "is not its own", r => Refusal<StartPaging, PagingStarted>(steps, run.Main,
            Paging(r, vouch, vouch.Pages), ct), toMain);
        var toSub = (await Measure(measured)).Vouches![run.Sub1];
        await Row("paging with the source's word to another host", "is not its own", r => Refusal<StartPaging, PagingStarted>(steps, run.Main,
            Paging(r, toSub, toSub.Pages), ct), () => measured);
        await Row("paging for more room than the source placed there", "asked for a guest its source measured", r => Refusal<StartPaging, PagingStarted>(steps, run.Main,
            Paging(r, vouch, vouch.Pages + 1), ct), () => measured);
        await Row("a made-up migration measuring the guest while another holds it", "is moving under this drain order already", r => Refusal<MeasureGuest, GuestLayout>(steps, run.Source,
            new MeasureGuest(r.MigrationId, r.Vm, r.Guest, r), ct), toMain);
        await Allowed<StartPaging, PagingStarted>(steps, run.Main, Paging(measured, vouch, vouch.Pages), ct);
        // Undone at the source (which lets another measure the guest) while the main host still serves it:
        // the next migration's paging there waits until it is released there too.
        await Undo(measured);
        var next = toMain();
        var nextVouch = (await Measure(next)).Vouches![run.Main];
        await Row("a second migration of the guest paging at a destination at once", "is moving here under this drain order already", r => Refusal<StartPaging, PagingStarted>(steps, run.Main,
            Paging(r, nextVouch, nextVouch.Pages), ct), () => next);
        await Allowed<ReleasePaging, PagingReleased>(steps, run.Main, new ReleasePaging(measured.MigrationId, measured.Vm, run.Main, measured), ct);
        await Allowed<StartPaging, PagingStarted>(steps, run.Main, Paging(next, nextVouch, nextVouch.Pages), ct);
        await Allowed<ReleasePaging, PagingReleased>(steps, run.Main, new ReleasePaging(next.MigrationId, next.Vm, run.Main, next), ct);
        await Undo(next);

        // Two migrations of the guest under the order at once (the second one made up): the second is refused
        // while the first lasts, and goes once the first was released at the source.
        var first = Under(new Destination(run.Main, 60_000), new Destination(run.Sub1, 30_000));
        Task<IntrospectionResult> Introspect(MigrationRequest r) =>
            Allowed<IntrospectGuest, IntrospectionResult>(steps, run.Source, new IntrospectGuest(r.MigrationId, r.Vm, r.Guest, r.Mode, r.PlainProcesses, r), ct);
        await Introspect(first);
        var second = Under(new Destination(run.Main, 60_000), new Destination(run.Sub2, 30_000));
        await Row("a second migration of the guest under the order at once", "is moving under this drain order already", r => Refusal<IntrospectGuest, IntrospectionResult>(steps, run.Source,
            new IntrospectGuest(r.MigrationId, r.Vm, r.Guest, r.Mode, r.PlainProcesses, r), ct), () => second);
        // A step of the first migration carrying another request under the order (one that names other
        // hosts: one vouching for an undo it never saw) is refused: one migration, one request.
        await Row("a step of a migration with another request under the order", "one migration, one request", r => Refusal<ReleaseSource, SourceReleased>(steps, run.Source,
            new ReleaseSource(r.MigrationId, r.Vm, VmLeft: false, r), ct), () => first with { SubHosts = [new Destination(run.Sub2, 1)] });
        await Allowed<ReleaseSource, SourceReleased>(steps, run.Source, new ReleaseSource(first.MigrationId, first.Vm, VmLeft: false, first), ct);
        await Introspect(second);
        await Allowed<ReleaseSource, SourceReleased>(steps, run.Source, new ReleaseSource(second.MigrationId, second.Vm, VmLeft: false, second), ct);

        foreach (var (attack, tries, refused) in rows)
        {
            TestContext.Current.TestOutputHelper?.WriteLine($"| {attack,-56} | {tries,5} | {refused,7} | {0,9} |");
        }
        Assert.All(rows, x => Assert.Equal(x.Tries, x.Refused));
    }

    [Fact]
    public async Task Only_the_main_host_reaches_a_migrated_vms_pages_at_a_sub_host()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        // A small share at the main host: the sub-hosts hold much of the VM (free pages are not stored, so
        // which of them holds some depends on the guest's memory: the test takes one that does).
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 8000, subCapacity: 30000);
        var outcome = await run.MigrateAsync(request, ct);
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var sub = new[] { run.Sub1, run.Sub2 }.FirstOrDefault(h => run.HoldsPagesOf(h, request.Vm))
            ?? throw new Xunit.Sdk.XunitException("no sub-host holds pages of the VM");

        // Somebody else on the broker: the VM is not listed to them, and they can neither release nor fetch it.
        await using var connection = await new RabbitMQ.Client.ConnectionFactory { Uri = new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]) }
            .CreateConnectionAsync(ct);
        await using var intruder = await MemoryServer.Client.PageClient.CreateAsync(connection, ct);
        var usage = await intruder.UsageAsync(sub, ct);
        Assert.True(usage.UsedPages > 0);
        Assert.False(usage.PagesPerVm.ContainsKey(request.Vm), "another client sees the migrated VM listed");
        // Its queues there are named by its capability: another client cannot even address the VM.
        var refused = await Assert.ThrowsAsync<MemoryServer.PageProtocolException>(() => intruder.ReleaseAsync(sub, request.Vm, ct));
        Assert.Equal(Contracts.Paging.PageError.UnknownVm, refused.Code);
        var fetched = await Assert.ThrowsAsync<MemoryServer.PageProtocolException>(() => intruder.FetchAsync(sub, request.Vm, [0UL], ct));
        Assert.Equal(Contracts.Paging.PageError.UnknownVm, fetched.Code);
        Assert.True(run.HoldsPagesOf(sub, request.Vm), "the refused release dropped the pages");
        var hijack = await Assert.ThrowsAsync<MemoryServer.PageProtocolException>(() =>
            intruder.StartVmAsync(sub, request.Vm, MigrationMode.Semigrate, 1, RandomNumberGenerator.GetBytes(32), ct));
        Assert.Equal(Contracts.Paging.PageError.Forbidden, hijack.Code);
        // The memory server's refusals reach the audit trail, counted, in its host's reports.
        var fleet = await run.FleetOnceAsync(f => f.Hosts.Any(h => h.Host == sub && h.RefusedRequests?.GetValueOrDefault("Forbidden") >= 1),
            $"{sub} reports the refused StartVm", ct);
        TestContext.Current.TestOutputHelper?.WriteLine($"{sub} reports refused requests: " +
            string.Join(", ", fleet.Hosts.Single(h => h.Host == sub).RefusedRequests!.Select(r => $"{r.Key} {r.Value}")));
        TestContext.Current.TestOutputHelper?.WriteLine($"another client's release at {sub}: {refused.Message}");

        // A stop the operator did not sign (or signed by another operator) is refused: the VM runs on.
        var steps = run.Host.Services.GetRequiredService<IClientFactory>(); // answers by direct reply-to, as the engine's
        using var otherOperator = OperatorKey.Generate();
        foreach (var forged in new[] { new StopVm(request.MigrationId, request.Vm, run.Main), OperatorSignatures.Sign(new StopVm(request.MigrationId, request.Vm, run.Main), otherOperator, TimeSpan.FromHours(1)) })
        {
            var answer = await steps.CreateRequestClient<StopVm>(new Uri($"queue:{StepQueues.Host(run.Main)}"), RequestTimeout.After(s: 60))
                .GetResponse<VmStopped, StepRefused>(forged, ct);
            Assert.True(answer.Is(out Response<StepRefused>? no), "a forged stop was taken");
            Assert.Contains("StopVm refused", no!.Message.Reason, StringComparison.Ordinal);
        }
        Assert.True(run.HoldsPagesOf(sub, request.Vm), "a refused stop dropped the pages");

        // The main host, which holds the capability, releases them when the VM stops.
        var stopped = await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(request.MigrationId, request.Vm, run.Main)), ct);
        Assert.True(stopped.Released.Single(r => r.Host == sub).Pages > 0);
        Assert.False(run.HoldsPagesOf(run.Sub1, request.Vm));
        Assert.False(run.HoldsPagesOf(run.Sub2, request.Vm));
    }
}
