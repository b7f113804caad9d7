using MassTransit;
using Microsoft.Extensions.Logging.Abstractions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Introspection.Classification;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using SEmigrate.TestSupport;
using Temporalio.Converters;
using Temporalio.Exceptions;
using Temporalio.Testing;

namespace SEmigrate.Activities.Tests;

/// <summary>The source's activities as Temporal runs them (ActivityEnvironment), on a real guest dump,
/// against a real memory server over RabbitMQ.</summary>
public sealed class SourceActivitiesTests(RealGuestFixture guest, RabbitMqFixture rabbit)
    : IClassFixture<RealGuestFixture>, IClassFixture<RabbitMqFixture>, IAsyncLifetime
{
    private readonly DirectoryInfo state = Directory.CreateTempSubdirectory("semigrate-activities-");
    private IBusControl bus = null!;
    private PageClient client = null!;
    private SourceActivities source = null!;
    private readonly HostKeyPair keys = HostKeyPair.Generate(); // the source's identity

    public async ValueTask InitializeAsync()
    {
        bus = await TestBus.StartAsync(rabbit);
        client = await PageClient.CreateAsync(rabbit.Connection);
        source = new SourceActivities(Host, client, bus, TestBus.Guard(Host, bus), keys, NullLogger<SourceActivities>.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        await client.DisposeAsync();
        await bus.StopAsync();
        state.Delete(recursive: true);
        keys.Dispose();
    }

    /// <summary>The source keeps its guests where the fixture booted them.</summary>
    private HostContext Host => new("src", state.FullName, GuestsDirectory: Path.GetDirectoryName(guest.Guest.Directory));

    private string MapOf(Guid migration) => new SourceState(Host, migration).MapPath;

    private IntrospectGuest Introspect(Guid migration, string main = "main", params string[] subs)
    {
        var vm = Guid.NewGuid();
        var name = Path.GetFileName(guest.Guest.Directory);
        return new(migration, vm, name, MigrationMode.Semigrate, ["vaultdb"], Request(migration, vm, name, main, subs));
    }

    /// <summary>The operator's request behind the steps: the guest goes to <paramref name="main"/> (a third of
    /// it at most when there are sub-hosts) and the sub-hosts.</summary>
    private static MigrationRequest Request(Guid migration, Guid vm, string guestName, string main, string[] subs, byte[]? mainKey = null) =>
        TestOperator.Sign(new MigrationRequest(migration, vm, guestName, "src", new Destination(main, subs.Length == 0 ? 1 << 30 : 20_000),
            [.. subs.Select(s => new Destination(s, 1 << 30))], MigrationMode.Semigrate, ["vaultdb"]), mainKey is null ? [] : [new PinnedHost(main, mainKey)]);

    /// <summary>The assignment of <paramref name="host"/> in the request's placement, as the source computes it.</summary>
    private static Assignment AssignmentOf(IntrospectGuest intro, IntrospectionResult found, string host) =>
        Placement.Plan(found.ChunkGuestPages, found.ChunkPages, intro.Request!.Main, intro.Request.SubHosts).Assignments.Single(a => a.Host == host);

    [Fact]
    public async Task Introspection_classifies_every_page_and_keeps_the_data_key_to_the_source()
    {
        var migration = Guid.NewGuid();
        var result = await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(Introspect(migration)));

        var map = ClassificationMap.Load(MapOf(migration));
        Assert.Equal((long)map.GuestPages, result.Pages.Total);
        Assert.Equal(result.Pages.Total, result.ChunkGuestPages.Sum(c => (long)c));
        Assert.True(result.Pages.Zero > 0 && result.Pages.Plain > 0 && result.Pages.Sealed > 0, $"{result.Pages}");
        // The data key is in the kernel's keyring, not in a file of the migration's folder.
        var state = new SourceState(Host, migration);
        Assert.True(state.HasKey);
        Assert.False(File.Exists(Path.Combine(Host.MigrationDirectory(migration), "data.key")));
        state.Release(Guid.NewGuid());
        Assert.False(state.HasKey); // a release erases it there
    }

    [Theory]
    [InlineData("no-such-guest", "host src has no guest 'no-such-guest'")]
    [InlineData("../../etc", "is not a guest name")]
    [InlineData("/tmp", "is not a guest name")]
    [InlineData(".hidden", "is not a guest name")]
    public async Task A_guest_this_host_does_not_have_or_a_path_is_refused_without_retries(string name, string why)
    {
        var input = Introspect(Guid.NewGuid()) is var i ? i with { Guest = name, Request = Request(i.MigrationId, i.Vm, name, "main", []) } : null!;

        var e = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(input)));
        Assert.True(e.NonRetryable);
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
    }

    /// <summary>The guest introspected, and a destination's memory server serving its VM, for a transfer.</summary>
    private sealed record ServedVm(Guid Migration, IntrospectGuest Intro, IntrospectionResult Found, string Host, InMemoryPageStore Store, PageServer Server)
        : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Server.DisposeAsync();
            Store.Dispose();
        }
    }

    private async Task<ServedVm> IntrospectedToADestinationAsync(CancellationToken ct)
    {
        var migration = Guid.NewGuid();
        var host = rabbit.Name("dest");
        var intro = Introspect(migration, host);
        var found = await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(intro));
        var store = new InMemoryPageStore(200_000);
        var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = host, CapacityPages = 200_000, AllowVmsWithoutCapability = true }, store, NullLogger.Instance, ct);
        await client.StartVmAsync(host, intro.Vm, MigrationMode.Semigrate, found.Pages.Total, ct);
        return new ServedVm(migration, intro, found, host, store, server);
    }

    [Fact]
    public async Task A_retried_transfer_resumes_from_its_last_heartbeat_and_sends_nothing_below_it()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var d = await IntrospectedToADestinationAsync(ct);
        var (migration, intro, found, host, store) = (d.Migration, d.Intro, d.Found, d.Host, d.Store);
        var resumeAt = found.PfnLimit / 2;
        var heartbeats = new List<TransferProgress>();
        var env = new ActivityEnvironment
        {
            // The last attempt's heartbeat said: everything below resumeAt is stored.
            Info = ActivityEnvironment.DefaultInfo with { Attempt = 2, HeartbeatDetails = [DataConverter.Default.PayloadConverter.ToPayload(new TransferProgress(migration, host, resumeAt, 0, found.Pages.Total, 0))] },
            Heartbeater = details => heartbeats.Add((TransferProgress)details.Single()!),
        };
        var transfer = new TransferPages(migration, intro.Vm, MigrationMode.Semigrate, AssignmentOf(intro, found, host), 0, 2, null, Request: intro.Request);

        var result = await env.RunAsync(() => source.TransferAsync(transfer));

        var map = ClassificationMap.Load(MapOf(migration));
        var below = Enumerable.Range(0, (int)resumeAt).Select(p => (ulong)p).Where(map.IsGuestPage).ToList();
        var above = Enumerable.Range((int)resumeAt, (int)(found.PfnLimit - resumeAt)).Select(p => (ulong)p).Where(map.IsGuestPage).ToList();
        Assert.All(below, p => Assert.Null(store.Get(intro.Vm, p)));
        // Above it every page with bytes went; free pages did not travel at all (the manifest names them).
        Assert.All(above, p => Assert.Equal(map[p] != PageClass.Zero, store.Get(intro.Vm, p) is not null));
        Assert.Equal(above.Count(p => map[p] != PageClass.Zero), store.PagesPerVm()[intro.Vm]);
        Assert.Equal(transfer.Assignment.EndPfn, heartbeats[^1].NextPfn); // the whole share (its last chunk may end past the guest)
        Assert.Equal(found.Pages.Total, heartbeats[^1].PagesSent); // free pages count as done, though nothing of them went
        Assert.True(heartbeats.Select(h => h.NextPfn).SequenceEqual(heartbeats.Select(h => h.NextPfn).Order()), "heartbeats only move forward");
        Assert.Equal(0, result.ResentBytes);
        // What was sent is sealed where the map says so: a sealed page's record holds no plaintext.
        var sealedPfn = above.First(p => map[p] == PageClass.Sealed);
        Assert.Equal(PageClass.Sealed, PageFrame.ReadRecord(store.Get(intro.Vm, sealedPfn)!).Class);
        // Under the epoch the result names; an attempt after it takes a new one (what `semigrate audit` checks).
        Assert.Equal(result.Epochs!.Single(), PageFrame.ReadRecord(store.Get(intro.Vm, sealedPfn)!).KeyEpoch);
        var again = await new ActivityEnvironment().RunAsync(() => source.TransferAsync(transfer with { Attempt = 3 }));
        Assert.Equal(2, again.Epochs!.Count);
        Assert.Equal(result.Epochs![0], again.Epochs[0]);
        Assert.NotEqual(again.Epochs[0], again.Epochs[1]);
    }

    [Fact]
    public async Task Under_Temporal_a_transfer_signals_its_workflow_its_progress_sparsely_and_its_last_beat()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var d = await IntrospectedToADestinationAsync(ct);
        var (migration, intro, found, host) = (d.Migration, d.Intro, d.Found, d.Host);
        var heartbeats = new List<TransferProgress>();
        var signals = new SignalRecorder();
        var env = new ActivityEnvironment
        {
            Info = ActivityEnvironment.DefaultInfo with { WorkflowId = $"migration-{intro.Vm}", WorkflowRunId = "run-1" },
            Heartbeater = details => heartbeats.Add((TransferProgress)details.Single()!),
            // A client that never connects: the recorder answers every signal.
            TemporalClient = Temporalio.Client.TemporalClient.CreateLazy(new("127.0.0.1:1") { Interceptors = [signals] }),
        };
        var transfer = new TransferPages(migration, intro.Vm, MigrationMode.Semigrate, AssignmentOf(intro, found, host), 0, 1, null, Request: intro.Request);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        await env.RunAsync(() => source.TransferAsync(transfer));
        var elapsed = clock.Elapsed;

        // The last one goes after the transfer's answer (it never holds the transfer up).
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!signals.Sent.Any(s => s.Beat.PagesSent == found.Pages.Total) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50, ct);
        }
        var sent = signals.Sent.ToList();
        Assert.All(sent, s => Assert.Equal(($"migration-{intro.Vm}", "run-1", TransferProgress.Signal), (s.Workflow, s.Run, s.Signal)));
        Assert.Equal(heartbeats[0], sent[0].Beat);
        Assert.Equal(heartbeats[^1], sent[^1].Beat);
        Assert.Equal(found.Pages.Total, sent[^1].Beat.PagesSent);
        Assert.All(sent, s => Assert.Contains(s.Beat, heartbeats));
        // Every signal is a history event: the first, the last (the same one when the transfer beat once),
        // and at most one per 5 s between them.
        Assert.InRange(sent.Count, heartbeats.Count == 1 ? 1 : 2, 2 + (int)(elapsed.TotalSeconds / 5));
    }

    private sealed class SignalRecorder : Temporalio.Client.Interceptors.IClientInterceptor
    {
        public System.Collections.Concurrent.ConcurrentQueue<(string Workflow, string? Run, string Signal, TransferProgress Beat)> Sent { get; } = new();

        public Temporalio.Client.Interceptors.ClientOutboundInterceptor InterceptClient(Temporalio.Client.Interceptors.ClientOutboundInterceptor nextInterceptor) =>
            new Outbound(nextInterceptor, this);

        private sealed class Outbound(Temporalio.Client.Interceptors.ClientOutboundInterceptor next, SignalRecorder recorder)
            : Temporalio.Client.Interceptors.ClientOutboundInterceptor(next)
        {
            public override Task SignalWorkflowAsync(Temporalio.Client.Interceptors.SignalWorkflowInput input)
            {
                recorder.Sent.Enqueue((input.Id, input.RunId, input.Signal, (TransferProgress)input.Args.Single()!));
                return Task.CompletedTask;
            }
        }
    }

    [Fact]
    public async Task Hand_over_sends_the_main_host_the_sealed_manifest_and_a_key_that_opens_only_there()
    {
        var ct = TestContext.Current.CancellationToken;
        var migration = Guid.NewGuid();
        var mainHost = rabbit.Name("main");
        using var main = HostKeyPair.Generate();
        using var other = HostKeyPair.Generate();
        var intro = Introspect(migration, mainHost);
        intro = intro with { Request = Request(migration, intro.Vm, intro.Guest, mainHost, [], main.PublicKey) };
        await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(intro));
        using var store = new InMemoryPageStore(10_000);
        await using var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = mainHost, CapacityPages = 10_000, AllowVmsWithoutCapability = true }, store, NullLogger.Instance, ct);
        await client.StartVmAsync(mainHost, intro.Vm, MigrationMode.Semigrate, 0, ct);

        var handedOver = await new ActivityEnvironment().RunAsync(() => source.HandOverAsync(new HandOver(migration, intro.Vm, mainHost, main.PublicKey, intro.Request)));

        string Context(string main, uint epoch) => SourceActivities.KeyContext(migration, intro.Vm, main, epoch, handedOver.ManifestDigest!);
        var epoch = handedOver.Epoch!.Value;
        using var key = KeyWrap.UnwrapFrom(handedOver.WrappedKey, main, keys.PublicKey, Context(mainHost, epoch));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.UnwrapFrom(handedOver.WrappedKey, other, keys.PublicKey, Context(mainHost, epoch)));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.UnwrapFrom(handedOver.WrappedKey, main, keys.PublicKey, Context("main-2", epoch)));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.UnwrapFrom(handedOver.WrappedKey, main, keys.PublicKey, Context(mainHost, epoch + 1)));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.UnwrapFrom(handedOver.WrappedKey, main, other.PublicKey, Context(mainHost, epoch))); // as another source's
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.Unwrap(handedOver.WrappedKey, main, Context(mainHost, epoch))); // as nobody's

        // The manifest is the map, as sealed records only the data key opens; the free pages of 256 MiB
        // (over half of them) cost a few KiB.
        using var opener = new PageOpener(key, intro.Vm);
        var manifest = ClassificationMap.FromBytes(SealedBlob.Open(BlobKind.Manifest, intro.Vm, p => store.Get(intro.Vm, p) is { } r ? PageFrame.ReadRecord(r) : null, opener, mainHost, 1 << 24));
        var map = ClassificationMap.Load(MapOf(migration));
        Assert.Equal(map.ToBytes(), manifest.ToBytes());
        Assert.True(handedOver.ManifestBytes < 64 << 10, $"{handedOver.ManifestBytes} bytes");
        Assert.All(store.PagesPerVm().Keys, vm => Assert.Equal(intro.Vm, vm));
        using var wrongKey = DataKey.Generate();
        using var wrongOpener = new PageOpener(wrongKey, intro.Vm);
        var e = Assert.Throws<PageIntegrityException>(() => SealedBlob.Open(BlobKind.Manifest, intro.Vm, p => store.Get(intro.Vm, p) is { } r ? PageFrame.ReadRecord(r) : null, wrongOpener, mainHost, 1 << 24));
        Assert.Contains("manifest record does not open", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Transfers_to_several_destinations_share_the_hosts_bandwidth_limit()
    {
        var ct = TestContext.Current.CancellationToken;
        const double limit = 25; // MB/s, for all transfers of the host together
        var throttled = new SourceActivities(Host with { MaxTransferMBps = limit }, client, bus, TestBus.Guard(Host, bus), keys, NullLogger<SourceActivities>.Instance);
        var migration = Guid.NewGuid();
        var (a, b) = (rabbit.Name("dest-a"), rabbit.Name("dest-b"));
        var intro = Introspect(migration, a, b);
        var found = await new ActivityEnvironment().RunAsync(() => throttled.IntrospectAsync(intro));
        using var storeA = new InMemoryPageStore(200_000);
        using var storeB = new InMemoryPageStore(200_000);
        await using var serverA = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = a, CapacityPages = 200_000, AllowVmsWithoutCapability = true }, storeA, NullLogger.Instance, ct);
        await using var serverB = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = b, CapacityPages = 200_000, AllowVmsWithoutCapability = true }, storeB, NullLogger.Instance, ct);
        await client.StartVmAsync(a, intro.Vm, MigrationMode.Semigrate, 0, ct);
        await client.StartVmAsync(b, intro.Vm, MigrationMode.Semigrate, 0, ct);
        // Two transfers at once from one source, each of its share.
        TransferPages To(string host) => new(migration, intro.Vm, MigrationMode.Semigrate, AssignmentOf(intro, found, host), 0, 1, null, Request: intro.Request);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var results = await Task.WhenAll(
            new ActivityEnvironment().RunAsync(() => throttled.TransferAsync(To(a))),
            new ActivityEnvironment().RunAsync(() => throttled.TransferAsync(To(b))));
        var seconds = clock.Elapsed.TotalSeconds;

        // Each transfer kept to the limit on its own before: together they sent at twice the limit.
        var rate = results.Sum(r => r.Bytes) / seconds / 1e6;
        TestContext.Current.TestOutputHelper?.WriteLine($"{results.Sum(r => r.Bytes)} bytes in {seconds:0.00} s: {rate:0.0} MB/s, limit {limit}");
        Assert.True(rate <= limit * 1.1, $"{rate:0.0} MB/s together, limit {limit}");
        Assert.True(rate >= limit * 0.5, $"{rate:0.0} MB/s: the limit should not starve them either");
    }
}
