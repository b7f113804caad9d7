using MassTransit;
using Microsoft.Extensions.Logging.Abstractions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Introspection.Classification;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using SEmigrate.TestSupport;
using Temporalio.Exceptions;
using Temporalio.Testing;

namespace SEmigrate.Activities.Tests;

/// <summary>The main host's switch-over as Temporal runs it (ActivityEnvironment): the manifest from its
/// own store, page-outs to a real memory server over RabbitMQ.</summary>
public sealed class MainHostActivitiesTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>, IAsyncLifetime
{
    private const string Main = "main";
    private readonly DirectoryInfo state = Directory.CreateTempSubdirectory("semigrate-main-");
    private readonly DataKey key = DataKey.Generate();
    private readonly HostKeyPair keys = HostKeyPair.Generate();
    private readonly HostKeyPair sourceKeys = HostKeyPair.Generate(); // the source's identity, pinned in the request
    private readonly InMemoryPageStore store = new(1000);
    private static readonly byte[] ManifestBytes = new ClassificationMap([2, 2, 2, 2, 2, 2, 2, 2]).ToBytes();
    private const uint HandOverEpoch = 7;
    private readonly Guid vm = Guid.NewGuid();
    private readonly Guid migration = Guid.NewGuid();
    private IBusControl bus = null!;
    private MigrationRequest? request;
    private PageClient client = null!;
    private PageServer sub = null!;

    public async ValueTask InitializeAsync()
    {
        bus = await TestBus.StartAsync(rabbit);
        client = await PageClient.CreateAsync(rabbit.Connection);
        sub = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = rabbit.Name("sub"), CapacityPages = 1000, AllowVmsWithoutCapability = true },
            new InMemoryPageStore(1000), NullLogger.Instance);
        await client.StartVmAsync(sub.Host, vm, MigrationMode.Semigrate);
        // What the source's hand-over leaves in the main host's store: the manifest of 8 sealed pages.
        using var sealer = key.CreateSealer(vm, HandOverEpoch);
        store.Put(vm, SealedBlob.Seal(BlobKind.Manifest, ManifestBytes, sealer));
    }

    public async ValueTask DisposeAsync()
    {
        await sub.DisposeAsync();
        sub.Store.Dispose();
        await client.DisposeAsync();
        await bus.StopAsync();
        state.Delete(recursive: true);
        key.Dispose();
        keys.Dispose();
        sourceKeys.Dispose();
    }

    /// <summary>A main host worker, as started afresh on the same state folder.</summary>
    private (MainHostActivities Activities, MainHostVms Vms) Worker()
    {
        var vms = new MainHostVms();
        var host = new HostContext(Main, state.FullName);
        return (new MainHostActivities(host, client, store, keys, vms, bus,
            new AuditRoute("semigrate-audit-activity-tests", 1), TestBus.Guard(host, bus), new VmCapabilities(host), new TakeOvers(host), NullLogger<MainHostActivities>.Instance), vms); // no auditor reads it
    }

    private static string Digest => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(ManifestBytes));

    /// <summary>The data key as the source wraps it for this hand-over.</summary>
    private byte[] Wrapped(HostKeyPair? by = null, string main = Main, uint epoch = HandOverEpoch) =>
        KeyWrap.WrapFrom(key, by ?? sourceKeys, keys.PublicKey, SourceActivities.KeyContext(migration, vm, main, epoch, Digest));

    private SwitchOver Input(byte[]? wrapped = null, uint epoch = HandOverEpoch) => new(migration, vm, Main, MigrationMode.Semigrate,
        wrapped ?? Wrapped(), new PlacementPlan([new Assignment(Main, 0, 4, 4), new Assignment(sub.Host, 4, 8, 4)]), Request: Request, Epoch: epoch, ManifestDigest: Digest);

    /// <summary>The operator's request the switch-over belongs to: one (a host binds a migration to the first it sees).</summary>
    private MigrationRequest Request => request ??= TestOperator.Sign(new MigrationRequest(migration, vm, "guest", "src", new Destination(Main, 4), [new Destination(sub.Host, 4)],
        MigrationMode.Semigrate, []), [new PinnedHost(Main, keys.PublicKey), new PinnedHost("src", sourceKeys.PublicKey)]);

    [Fact]
    public async Task A_vm_taken_over_again_by_a_restarted_worker_never_pages_out_under_the_same_epoch()
    {
        var epochs = new List<uint>();
        var nonces = new List<string>();
        for (var take = 0; take < 2; take++)
        {
            var (main, vms) = Worker();
            var result = await new ActivityEnvironment().RunAsync(() => main.SwitchOverAsync(Input()));
            Assert.Equal((4L, 4L), (result.LocalPages, result.RemotePages));
            await vms.Find(vm)!.Pager.PageOutAsync(5, Enumerable.Repeat((byte)take, 4096).ToArray(), TestContext.Current.CancellationToken);
            var record = PageFrame.ReadRecord(sub.Store.Get(vm, 5)!);
            epochs.Add(record.KeyEpoch);
            nonces.Add(Convert.ToHexString(record.Body.Span[..PageRecord.NonceSize]));
        }
        // Both page-outs are version 2 of page 5: under one epoch (as with the constant epoch before)
        // they would have had the same key and nonce.
        Assert.NotEqual(epochs[0], epochs[1]);
        Assert.All(epochs, e => Assert.True(e >= 0x4000_0000u, $"epoch {e:x} is in the main host's range"));
    }

    [Fact]
    public async Task A_page_missing_from_its_own_store_is_a_security_event_not_zeros()
    {
        var (main, vms) = Worker();
        await new ActivityEnvironment().RunAsync(() => main.SwitchOverAsync(Input()));

        var e = await Assert.ThrowsAsync<PageIntegrityException>(() => vms.Find(vm)!.Pager.PageInAsync(1, new byte[4096], TestContext.Current.CancellationToken));
        Assert.Contains("missing from this host's own store", e.Message, StringComparison.Ordinal);
        Assert.Equal((1UL, Main), (e.Pfn, e.Host));
    }

    [Fact]
    public async Task A_key_not_the_sources_wrap_for_this_host_and_hand_over_or_an_altered_manifest_is_refused_without_retries()
    {
        var (main, _) = Worker();
        using var attacker = HostKeyPair.Generate();
        var refusals = new (string Why, SwitchOver Input)[]
        {
            ("wrapped for another host", Input(Wrapped(main: "main-2"))),
            ("wrapped by somebody else for this host and hand-over", Input(Wrapped(by: attacker))),
            ("wrapped without proof of its sender", Input(KeyWrap.Wrap(key, keys.PublicKey, SourceActivities.KeyContext(migration, vm, Main, HandOverEpoch, Digest)))),
            ("another hand-over's epoch claimed", Input(epoch: HandOverEpoch + 1)),
        };
        foreach (var (why, input) in refusals)
        {
            var refused = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => main.SwitchOverAsync(input)));
            Assert.True(refused.NonRetryable, why);
            Assert.Equal(StepErrors.Denied, refused.ErrorType);
            Assert.Contains("the data key is not the source src's wrap for this host and this hand-over", refused.Message, StringComparison.Ordinal);
        }

        var record = store.Get(vm, SealedBlob.FirstPfn(BlobKind.Manifest))!;
        record[PageRecord.HeaderSize + 20] ^= 1;
        store.Put(vm, [PageFrame.ReadRecord(record)]);
        var altered = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => main.SwitchOverAsync(Input())));
        Assert.True(altered.NonRetryable);
        Assert.Contains("manifest record does not open", altered.Message, StringComparison.Ordinal);
    }

    /// <summary>The main host's memory-server steps, on the same state folder.</summary>
    private PagingActivities Paging()
    {
        var host = new HostContext(Main, state.FullName);
        return new PagingActivities(host, client, store, TestBus.Guard(host, bus), new VmCapabilities(host), keys, isMain: true, new TakeOvers(host));
    }

    [Fact]
    public async Task A_main_host_declines_a_vm_it_did_not_take_over_for_good_and_never_one_it_did()
    {
        var statement = TakeOvers.DeclinedStatement(migration, vm, Main);

        // Taken over: an undo after it is refused, and nothing is released (the VM may run here).
        var (main, vms) = Worker();
        await new ActivityEnvironment().RunAsync(() => main.SwitchOverAsync(Input()));
        var late = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => Paging().ReleasePagingAsync(new ReleasePaging(migration, vm, Main, Request))));
        Assert.Equal(StepErrors.Denied, late.ErrorType);
        Assert.Contains("was taken over here", late.Message, StringComparison.Ordinal);
        Assert.NotNull(vms.Find(vm));

        // Declined before any switch-over (another migration of the VM): the source gets a word only the two
        // of them can make, and the switch-over that comes after is refused.
        var undo = TestOperator.Sign(Request with { MigrationId = Guid.NewGuid(), Signature = null }, [new PinnedHost(Main, keys.PublicKey), new PinnedHost("src", sourceKeys.PublicKey)]);
        var released = await new ActivityEnvironment().RunAsync(() => Paging().ReleasePagingAsync(new ReleasePaging(undo.MigrationId, vm, Main, undo)));
        Assert.Equal(Convert.ToHexString(sourceKeys.Vouch(keys.PublicKey, TakeOvers.DeclinedStatement(undo.MigrationId, vm, Main))), released.Declined);
        Assert.NotEqual(Convert.ToHexString(sourceKeys.Vouch(keys.PublicKey, statement)), released.Declined); // bound to its migration
        var (after, _) = Worker();
        var refused = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => after.SwitchOverAsync(Input() with { MigrationId = undo.MigrationId, Request = undo })));
        Assert.Equal(StepErrors.Denied, refused.ErrorType);
        Assert.Contains($"this host declined migration {undo.MigrationId}", refused.Message, StringComparison.Ordinal);
    }
}
