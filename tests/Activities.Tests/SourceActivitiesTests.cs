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

    public async ValueTask InitializeAsync()
    {
        bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
        {
            var user = rabbit.Uri.UserInfo.Split(':');
            cfg.Host(rabbit.Uri.Host, (ushort)rabbit.Uri.Port, "/", h =>
            {
                h.Username(user[0]);
                h.Password(user[1]);
            });
        });
        await bus.StartAsync(TestContext.Current.CancellationToken);
        client = await PageClient.CreateAsync(rabbit.Connection);
        source = new SourceActivities(new HostContext("src", state.FullName), client, bus, NullLogger<SourceActivities>.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        await client.DisposeAsync();
        await bus.StopAsync();
        state.Delete(recursive: true);
    }

    private IntrospectGuest Introspect(Guid migration) => new(migration, Guid.NewGuid(), guest.Guest.Directory, MigrationMode.Semigrate, ["vaultdb"]);

    [Fact]
    public async Task Introspection_classifies_every_page_and_keeps_the_data_key_to_the_source()
    {
        var result = await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(Introspect(Guid.NewGuid())));

        var map = ClassificationMap.Load(result.MapPath);
        Assert.Equal((long)map.GuestPages, result.Pages.Total);
        Assert.Equal(result.Pages.Total, result.ChunkGuestPages.Sum(c => (long)c));
        Assert.True(result.Pages.Zero > 0 && result.Pages.Plain > 0 && result.Pages.Sealed > 0, $"{result.Pages}");
        var key = Path.Combine(Path.GetDirectoryName(result.MapPath)!, "data.key");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
    }

    [Fact]
    public async Task A_guest_folder_without_a_dump_is_refused_without_retries()
    {
        var input = Introspect(Guid.NewGuid()) with { GuestDir = state.FullName };

        var e = await Assert.ThrowsAsync<ApplicationFailureException>(() => new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(input)));
        Assert.True(e.NonRetryable);
        Assert.Contains("memory.elf does not exist", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_retried_transfer_resumes_from_its_last_heartbeat_and_sends_nothing_below_it()
    {
        var ct = TestContext.Current.CancellationToken;
        var migration = Guid.NewGuid();
        var intro = Introspect(migration);
        var found = await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(intro));
        var host = rabbit.Name("dest");
        using var store = new InMemoryPageStore(200_000);
        await using var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = host, CapacityPages = 200_000 }, store, NullLogger.Instance, ct);
        await client.StartVmAsync(host, intro.Vm, MigrationMode.Semigrate, found.Pages.Total, ct);
        var resumeAt = found.PfnLimit / 2;
        var heartbeats = new List<TransferProgress>();
        var env = new ActivityEnvironment
        {
            // The last attempt's heartbeat said: everything below resumeAt is stored.
            Info = ActivityEnvironment.DefaultInfo with { Attempt = 2, HeartbeatDetails = [DataConverter.Default.PayloadConverter.ToPayload(new TransferProgress(migration, host, resumeAt, 0, found.Pages.Total, 0))] },
            Heartbeater = details => heartbeats.Add((TransferProgress)details.Single()!),
        };
        var transfer = new TransferPages(migration, intro.Vm, intro.GuestDir, found.MapPath, MigrationMode.Semigrate,
            new Assignment(host, 0, found.PfnLimit, found.Pages.Total), 0, 2, null);

        var result = await env.RunAsync(() => source.TransferAsync(transfer));

        var map = ClassificationMap.Load(found.MapPath);
        var below = Enumerable.Range(0, (int)resumeAt).Select(p => (ulong)p).Where(map.IsGuestPage).ToList();
        var above = Enumerable.Range((int)resumeAt, (int)(found.PfnLimit - resumeAt)).Select(p => (ulong)p).Where(map.IsGuestPage).ToList();
        Assert.All(below, p => Assert.Null(store.Get(intro.Vm, p)));
        Assert.All(above, p => Assert.NotNull(store.Get(intro.Vm, p)));
        Assert.Equal(found.PfnLimit, heartbeats[^1].NextPfn);
        Assert.True(heartbeats.Select(h => h.NextPfn).SequenceEqual(heartbeats.Select(h => h.NextPfn).Order()), "heartbeats only move forward");
        Assert.Equal(0, result.ResentBytes);
        // What was sent is sealed where the map says so: a sealed page's record holds no plaintext.
        var sealedPfn = above.First(p => map[p] == PageClass.Sealed);
        Assert.Equal(PageClass.Sealed, PageFrame.ReadRecord(store.Get(intro.Vm, sealedPfn)!).Class);
    }

    [Fact]
    public async Task The_wrapped_data_key_opens_at_the_main_host_it_is_for_and_nowhere_else()
    {
        var migration = Guid.NewGuid();
        await new ActivityEnvironment().RunAsync(() => source.IntrospectAsync(Introspect(migration)));
        using var main = HostKeyPair.Generate();
        using var other = HostKeyPair.Generate();

        var wrapped = await new ActivityEnvironment().RunAsync(() => source.WrapKeyAsync(new WrapKey(migration, Guid.NewGuid(), "main-1", main.PublicKey)));

        using var key = KeyWrap.Unwrap(wrapped.WrappedKey, main, SourceActivities.KeyContext(migration, "main-1"));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.Unwrap(wrapped.WrappedKey, other, SourceActivities.KeyContext(migration, "main-1")));
        Assert.ThrowsAny<System.Security.Cryptography.CryptographicException>(() => KeyWrap.Unwrap(wrapped.WrappedKey, main, SourceActivities.KeyContext(migration, "main-2")));
    }
}
