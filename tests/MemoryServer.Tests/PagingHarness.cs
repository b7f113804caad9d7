using Microsoft.Extensions.Logging.Abstractions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.MainHost;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>One memory server (a sub-host) and one client playing source and main host, for one VM
/// in one mode, on the real RabbitMQ; every queue it made is deleted afterwards.</summary>
internal sealed class PagingHarness : IAsyncDisposable
{
    public const int Pages = 64;

    private readonly RabbitMqFixture rabbit;
    private readonly DataKey key;
    private readonly PageSealer sealer;
    private readonly PageOpener opener;

    private PagingHarness(RabbitMqFixture rabbit, MigrationMode mode, PageServer server, PageClient client, DataKey key)
    {
        this.rabbit = rabbit;
        this.key = key;
        Server = server;
        Client = client;
        sealer = key.CreateSealer(Vm, 1);
        opener = new PageOpener(key, Vm);
        Codec = new PageCodec(mode, Vm, sealer, opener);
        Pager = new VmPager(client, Codec, Table, _ => Host, "main", local: null, e =>
        {
            Violations.Add(e);
            return ValueTask.CompletedTask;
        });
    }

    public Guid Vm { get; } = Guid.NewGuid();

    public string Host => Server.Host;

    public PageServer Server { get; }

    public PageClient Client { get; }

    public PageCodec Codec { get; }

    public PageTable Table { get; } = new(Pages);

    public VmPager Pager { get; }

    public List<PageIntegrityException> Violations { get; } = [];

    public static async Task<PagingHarness> StartAsync(RabbitMqFixture rabbit, MigrationMode mode, IPageStore? store = null, string? host = null)
    {
        var name = host ?? rabbit.Name("sub");
        var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = name, CapacityPages = 10_000, AllowVmsWithoutCapability = true },
            store ?? new InMemoryPageStore(10_000), NullLogger.Instance);
        var client = await PageClient.CreateAsync(rabbit.Connection);
        // allenc: the channel key is the key the pages are sealed with, and the sub-host gets it (wrapped).
        var harness = new PagingHarness(rabbit, mode, server, client, DataKey.Generate());
        var serverKey = await client.StartVmAsync(name, harness.Vm, mode);
        if (mode == MigrationMode.AllEnc)
        {
            await client.SendChannelKeyAsync(name, harness.Vm, harness.WrapChannelKey(serverKey));
        }
        return harness;
    }

    /// <summary>allenc: the channel key as the source sends it to this memory server.</summary>
    public byte[] WrapChannelKey(byte[] serverKey) => KeyWrap.Wrap(key, serverKey, $"allenc-channel|{Vm:N}|{Host}");

    /// <summary>Guest page <paramref name="pfn"/>: its classification and bytes (zero pages are zero).</summary>
    public static (PageClass Class, byte[] Bytes) GuestPage(ulong pfn, string? secret = null)
    {
        var c = (PageClass)(pfn % 3);
        var bytes = new byte[4096];
        if (c != PageClass.Zero)
        {
            new Random((int)pfn).NextBytes(bytes);
            if (secret is not null && c == PageClass.Sealed)
            {
                var s = System.Text.Encoding.ASCII.GetBytes(secret);
                for (var at = 0; at + s.Length <= 4096; at += 512)
                {
                    s.CopyTo(bytes, at);
                }
            }
        }
        return (c, bytes);
    }

    /// <summary>The source's transfer: every page encoded for the mode, stored in batches, version 1.</summary>
    public async Task TransferAsync(string? secret = null, int batch = 16)
    {
        var records = new List<PageRecord>();
        for (ulong pfn = 0; pfn < Pages; pfn++)
        {
            var (c, bytes) = GuestPage(pfn, secret);
            var record = Codec.Encode(pfn, 1, c, bytes);
            Table.Set(pfn, record.Class, 1);
            records.Add(record);
        }
        foreach (var chunk in records.Chunk(batch))
        {
            await Client.StoreAsync(Host, Vm, chunk);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await using (var channel = await rabbit.Connection.CreateChannelAsync())
        {
            foreach (var queue in new[] { PageQueues.Control(Host), Server.DeadLetterQueue, PageQueues.Bulk(Host, Vm), PageQueues.Fetch(Host, Vm) })
            {
                await channel.QueueDeleteAsync(queue, ifUnused: false, ifEmpty: false);
            }
        }
        await Client.DisposeAsync();
        await Server.DisposeAsync();
        Server.Store.Dispose();
        sealer.Dispose();
        opener.Dispose();
        key.Dispose();
    }
}
