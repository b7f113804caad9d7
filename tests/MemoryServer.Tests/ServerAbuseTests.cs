using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>The memory server as another broker user would abuse it: frames whose counts would make it
/// allocate without end, fetches whose replies would be huge, reservations and VMs without end, and
/// 10,000 fuzzed frames; and the main host's parsers of its replies, fed 10,000 fuzzed replies. Each is
/// refused, the server lives on, and a victim VM's pages stay whole. Prints one table.</summary>
public class ServerAbuseTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static List<PageRecord> Pages(int count, int first = 0) =>
        [.. Enumerable.Range(first, count).Select(i => new PageRecord(PageClass.Plain, (ulong)i, 1, 0, Enumerable.Repeat((byte)i, PageRecord.BodySize(PageClass.Plain)).ToArray()))];

    /// <summary>Sends raw frames to a queue and collects each one's reply by its correlation id. Stores are
    /// acknowledged together (StoreAcks, by request id, on another channel than errors, so in no order
    /// with them): those are only counted.</summary>
    private sealed class RawSender : IAsyncDisposable
    {
        private readonly IChannel channel;
        private readonly ConcurrentDictionary<string, TaskCompletionSource<byte[]>> waiting = new();
        private int answers;
        private int errors;

        /// <summary>Replies so far (each store in a StoreAcks counts one), and of them errors.</summary>
        public (int Answers, int Errors) Counted => (Volatile.Read(ref answers), Volatile.Read(ref errors));

        private RawSender(IChannel channel) => this.channel = channel;

        public static async Task<RawSender> StartAsync(IConnection connection)
        {
            var sender = new RawSender(await connection.CreateChannelAsync(cancellationToken: Ct));
            var consumer = new AsyncEventingBasicConsumer(sender.channel);
            consumer.ReceivedAsync += (_, d) =>
            {
                var body = d.Body.ToArray();
                var acks = body.Length > 5 && body[5] == (byte)FrameKind.StoreAcks ? PageFrame.ReadStoreAcks(body).Count : 1;
                Interlocked.Add(ref sender.answers, acks);
                Interlocked.Add(ref sender.errors, body.Length > 5 && body[5] == (byte)FrameKind.Error ? 1 : 0);
                if (d.BasicProperties.CorrelationId is { } id && sender.waiting.TryRemove(id, out var reply))
                {
                    reply.TrySetResult(body);
                }
                return Task.CompletedTask;
            };
            await sender.channel.BasicConsumeAsync("amq.rabbitmq.reply-to", autoAck: true, consumer, Ct);
            return sender;
        }

        private long next;

        public async Task<Task<byte[]>> SendAsync(string queue, byte[] frame)
        {
            var id = Interlocked.Increment(ref next).ToString(CultureInfo.InvariantCulture);
            var reply = waiting[id] = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
            await channel.BasicPublishAsync("", queue, mandatory: false, new BasicProperties { ReplyTo = "amq.rabbitmq.reply-to", CorrelationId = id }, frame, Ct);
            return reply.Task.WaitAsync(TimeSpan.FromSeconds(60), Ct);
        }

        public async Task<byte[]> RequestAsync(string queue, byte[] frame) => await await SendAsync(queue, frame);

        public async ValueTask DisposeAsync() => await channel.CloseAsync();
    }

    private sealed record Row(string Attack, int Tries, int Refused, long DataLost);

    private static bool IsError(byte[] reply, PageError? code = null) =>
        PageFrame.Parse(reply).Kind == FrameKind.Error && (code is null || PageFrame.ReadError(reply).Code == code);

    /// <summary>Pages of the victim's that are gone or changed.</summary>
    private static async Task<long> LostAsync(PageClient client, string host, Guid victim, IReadOnlyList<PageRecord> stored)
    {
        var back = await client.FetchAsync(host, victim, [.. stored.Select(p => p.Pfn)], Ct);
        return stored.Zip(back).Count(x => !x.First.Body.Span.SequenceEqual(x.Second.Body.Span) || x.First.Pfn != x.Second.Pfn);
    }

    [Fact]
    public async Task Every_abuse_of_the_memory_server_is_refused_and_loses_nothing()
    {
        var host = rabbit.Name("sub-abuse");
        const long capacity = 20_000;
        var store = new InMemoryPageStore(capacity);
        await using var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = host, CapacityPages = capacity, MaxVms = 16, AllowVmsWithoutCapability = true }, store,
            NullLogger.Instance, Ct);
        await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
        await using var raw = await RawSender.StartAsync(rabbit.Connection);
        var victim = Guid.NewGuid();
        var victimPages = Pages(200);
        await client.StartVmAsync(host, victim, MigrationMode.Semigrate, 200, Ct);
        await client.StoreAsync(host, victim, victimPages, Ct);
        var attacker = Guid.NewGuid();
        await client.StartVmAsync(host, attacker, MigrationMode.Semigrate, 0, Ct);
        var rows = new List<Row>();
        var control = PageQueues.Control(host);

        // A 36-byte Store that claims 8 Mi records (it made the server allocate ~335 MB).
        var before = GC.GetTotalAllocatedBytes(precise: true);
        var huge = PageFrame.Build(FrameKind.Store, attacker, 1, 8 << 20);
        var refused = 0;
        for (var i = 0; i < 20; i++)
        {
            refused += IsError(await raw.RequestAsync(PageQueues.Bulk(host, attacker), huge), PageError.Malformed) ? 1 : 0;
        }
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.True(allocated < 64 << 20, $"20 such frames allocated {allocated >> 20} MiB");
        rows.Add(new("store frame claiming 8 Mi records", 20, refused, await LostAsync(client, host, victim, victimPages)));

        // One fetch repeating one page 500k times (its reply would be ~2 GB).
        var fetchAll = new byte[PageFrame.HeaderSize + 500_000 * 8];
        PageFrame.WriteHeader(fetchAll, FrameKind.Fetch, victim, 2, 500_000);
        var bigFetch = await raw.RequestAsync(PageQueues.Fetch(host, victim), fetchAll);
        Assert.True(IsError(bigFetch, PageError.Malformed), "a fetch of 500k pages is refused");
        Assert.True(bigFetch.Length < 1024, $"its refusal is {bigFetch.Length} bytes");
        var most = PageFrame.BuildFetch(victim, 3, Enumerable.Repeat(5UL, PageFrame.MaxFetchPages).ToArray());
        var mostReply = await raw.RequestAsync(PageQueues.Fetch(host, victim), most);
        Assert.True(mostReply.Length <= PageFrame.MaxSize, "the largest fetch allowed has a reply within the frame limit");
        rows.Add(new("fetch of one page 500k times", 1, 1, await LostAsync(client, host, victim, victimPages)));

        // Reservations: one far beyond capacity, then many that together would be.
        refused = 0;
        var reserving = new List<Guid>();
        for (var i = 0; i < 12; i++)
        {
            var vm = Guid.NewGuid();
            var payload = new byte[9];
            BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(1), i == 0 ? long.MaxValue / 2 : capacity / 5);
            var reply = await raw.RequestAsync(control, PageFrame.Build(FrameKind.StartVm, vm, 4, 0, payload));
            if (IsError(reply, PageError.StoreFull))
            {
                refused++;
            }
            else
            {
                reserving.Add(vm);
            }
        }
        // 200 of the victim's, 5 x 4,000 do not fit with them: 4 fit.
        Assert.Equal(4, reserving.Count);
        rows.Add(new("reservations beyond capacity (of 12, 4 fit)", 12 - 4, refused, await LostAsync(client, host, victim, victimPages)));

        // More VMs than the server serves (each would open two channels).
        refused = 0;
        for (var i = 0; i < 20; i++)
        {
            var payload = new byte[9];
            var reply = await raw.RequestAsync(control, PageFrame.Build(FrameKind.StartVm, Guid.NewGuid(), 5, 0, payload));
            refused += IsError(reply, PageError.StoreFull) ? 1 : 0;
        }
        // The victim, the attacker and the reservations hold 6 of 16: 10 more fit, 10 are beyond.
        rows.Add(new("StartVm beyond MaxVms 16 (of 20, 10 fit)", 20 - (16 - 2 - reserving.Count), refused, await LostAsync(client, host, victim, victimPages)));

        // 10,000 fuzzed frames: valid frames of the attacker's VM, mutated (bits, bytes, counts, kinds, lengths).
        var random = new Random(12);
        var seeds = new List<byte[]>
        {
            PageFrame.BuildPages(FrameKind.Store, attacker, 6, Pages(3, 1000)),
            PageFrame.BuildPages(FrameKind.PageOut, attacker, 7, Pages(2, 2000)),
            PageFrame.BuildFetch(attacker, 8, [1000UL, 1001UL]),
            PageFrame.Build(FrameKind.Usage, Guid.Empty, 9, 0),
            PageFrame.Build(FrameKind.StartVm, attacker, 10, 0, [1, 0, 0, 0, 0, 0, 0, 0, 0]),
        };
        var (answersBefore, errorsBefore) = raw.Counted;
        for (var i = 0; i < 10_000; i++)
        {
            _ = await raw.SendAsync(control, Mutate(seeds[random.Next(seeds.Count)], random));
        }
        for (var until = DateTime.UtcNow.AddSeconds(60); raw.Counted.Answers - answersBefore < 10_000 && DateTime.UtcNow < until;)
        {
            await Task.Delay(50, Ct);
        }
        var (answered, errors) = (raw.Counted.Answers - answersBefore, raw.Counted.Errors - errorsBefore);
        rows.Add(new("fuzzed frames at the memory server", 10_000, errors, await LostAsync(client, host, victim, victimPages)));
        var usage = await client.UsageAsync(host, Ct); // alive, and answering
        Assert.Equal(200, usage.PagesPerVm[victim]);

        Print(rows);
        Assert.All(rows, r => Assert.Equal(0, r.DataLost));
        // Every abuse refused; of the fuzzed frames some are still valid requests for the attacker's own VM
        // (and were served), and every one of them was answered.
        Assert.All(rows[..^1], r => Assert.Equal(r.Tries, r.Refused));
        Assert.Equal(10_000, answered);
    }

    [Fact]
    public void Fuzzed_replies_at_the_main_hosts_parsers_are_refused_cleanly_with_bounded_allocation()
    {
        var random = new Random(34);
        var vm = Guid.NewGuid();
        var seeds = new List<byte[]>
        {
            PageFrame.BuildPages(FrameKind.Pages, vm, 1, Pages(4)),
            PageFrame.BuildStoreAcks([(1, 8), (2, 8), (3, 1)]),
            PageFrame.BuildError(vm, 4, PageError.UnknownPage, "page 0x3 of VM is not stored here"),
            UsageReport(),
        };
        var (tries, refused, parsed) = (0, 0, 0);
        var most = 0L;
        for (var i = 0; i < 10_000; i++)
        {
            var reply = Mutate(seeds[random.Next(seeds.Count)], random);
            foreach (var parse in new Action<byte[]>[]
                     {
                         r => PageFrame.ReadPages(r), r => PageFrame.ReadStoreAcks(r), r => PageFrame.ReadError(r), r => PageFrame.ReadUsage(r),
                     })
            {
                tries++;
                var before = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    parse(reply);
                    parsed++;
                }
                catch (InvalidDataException)
                {
                    refused++;
                }
                most = Math.Max(most, GC.GetAllocatedBytesForCurrentThread() - before - 8 * reply.Length);
            }
        }
        Print([new Row("fuzzed replies at the main host's parsers", tries, refused, 0)]);
        TestContext.Current.TestOutputHelper?.WriteLine($"  parsed as valid: {parsed}; most allocated beyond 8 bytes per reply byte: {most} bytes");
        Assert.Equal(tries, refused + parsed); // nothing but InvalidDataException (any other would have failed the test)
        Assert.True(refused > tries / 2, $"{refused} of {tries} refused");
        Assert.True(most < 64 << 10, $"a parse allocated {most} bytes beyond 8 per reply byte");
    }

    [Fact]
    public async Task A_vm_with_a_capability_is_released_shown_restarted_and_rekeyed_only_by_its_holder()
    {
        var host = rabbit.Name("sub-owned");
        var folder = Directory.CreateTempSubdirectory("semigrate-owned-").FullName;
        var options = new MemoryServerOptions { Host = host, CapacityPages = 10_000 };
        var store = new FilePageStore(folder, options.CapacityPages);
        var server = await PageServer.StartAsync(rabbit.Connection, options, store, NullLogger.Instance, Ct);
        await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
        await using var intruder = await PageClient.CreateAsync(rabbit.Connection, Ct); // somebody else on the broker
        var (victim, capability, other) = (Guid.NewGuid(), RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32));
        var victimPages = Pages(100);
        await client.StartVmAsync(host, victim, MigrationMode.Semigrate, 100, capability, Ct);
        await client.StoreAsync(host, victim, victimPages, Ct);
        var rows = new List<Row>();

        async Task<int> RefusedAsync(Func<Task> attack, int tries)
        {
            var refused = 0;
            for (var i = 0; i < tries; i++)
            {
                // Refused, or not even addressable: the VM's queues are named by its capability.
                var e = await Record.ExceptionAsync(attack);
                refused += e is PageProtocolException { Code: PageError.Forbidden or PageError.UnknownVm } ? 1 : 0;
            }
            return refused;
        }

        rows.Add(new("release of an owned VM, no capability", 10, await RefusedAsync(() => intruder.ReleaseAsync(host, victim, Ct), 10),
            await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("release of an owned VM, another capability", 10, await RefusedAsync(() => intruder.ReleaseAsync(host, victim, other, Ct), 10),
            await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("StartVm of an owned VM, another capability", 10,
            await RefusedAsync(() => intruder.StartVmAsync(host, victim, MigrationMode.Semigrate, 10_000, other, Ct), 10), await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("StartVm of an owned VM, no capability", 10,
            await RefusedAsync(() => intruder.StartVmAsync(host, victim, MigrationMode.Semigrate, 10_000, Ct), 10), await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("fetch from an owned VM, no capability", 10,
            await RefusedAsync(() => intruder.FetchAsync(host, victim, [1UL], Ct), 10), await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("store into an owned VM, no capability", 10,
            await RefusedAsync(() => intruder.StoreAsync(host, victim, Pages(1, 5), Ct), 10), await LostAsync(client, host, victim, victimPages)));
        // Usage: another client sees the totals, not the VM; its holder sees it.
        var hidden = new[] { await intruder.UsageAsync(host, Ct), await intruder.UsageAsync(host, victim, other, Ct) }.Count(u => !u.PagesPerVm.ContainsKey(victim));
        rows.Add(new("usage listing an owned VM, without its capability", 2, hidden, await LostAsync(client, host, victim, victimPages)));
        Assert.Equal(100, (await client.UsageAsync(host, victim, capability, Ct)).PagesPerVm[victim]);
        await client.StartVmAsync(host, victim, MigrationMode.Semigrate, 100, capability, Ct); // its holder may start it again

        // The owner survives a restart of a file-backed server.
        await server.DisposeAsync();
        store.Dispose();
        store = new FilePageStore(folder, options.CapacityPages);
        server = await PageServer.StartAsync(rabbit.Connection, options, store, NullLogger.Instance, Ct);
        rows.Add(new("release of an owned VM after a restart, no capability", 5, await RefusedAsync(() => intruder.ReleaseAsync(host, victim, Ct), 5),
            await LostAsync(client, host, victim, victimPages)));

        // allenc: the first channel key stays; the same one again is taken, another is refused.
        var allenc = Guid.NewGuid();
        var serverKey = await client.StartVmAsync(host, allenc, MigrationMode.AllEnc, 0, capability, Ct);
        using var channelKey = Sealing.DataKey.Generate();
        using var intruderKey = Sealing.DataKey.Generate();
        var context = $"allenc-channel|{allenc:N}|{host}";
        await client.SendChannelKeyAsync(host, allenc, Sealing.KeyWrap.Wrap(channelKey, serverKey, context), Ct);
        await client.SendChannelKeyAsync(host, allenc, Sealing.KeyWrap.Wrap(channelKey, serverKey, context), Ct);
        rows.Add(new("allenc channel key replaced", 5,
            await RefusedAsync(() => client.SendChannelKeyAsync(host, allenc, Sealing.KeyWrap.Wrap(intruderKey, serverKey, context), Ct), 5), 0));

        // Its holder releases it; its capability starts nothing here again (a replayed StartPaging would
        // reserve room for a migration that is over), not even after a restart.
        Assert.Equal(100, await client.ReleaseAsync(host, victim, capability, Ct));
        async Task<int> EndedAsync(int tries)
        {
            var refused = 0;
            for (var i = 0; i < tries; i++)
            {
                var e = await Record.ExceptionAsync(() => client.StartVmAsync(host, victim, MigrationMode.Semigrate, 5_000, capability, Ct));
                refused += e is PageProtocolException { Code: PageError.Ended } ? 1 : 0;
            }
            return refused;
        }
        rows.Add(new("StartVm with a released VM's capability (replay)", 5, await EndedAsync(5), 0));
        await server.DisposeAsync();
        store.Dispose();
        store = new FilePageStore(folder, options.CapacityPages);
        server = await PageServer.StartAsync(rabbit.Connection, options, store, NullLogger.Instance, Ct);
        rows.Add(new("the same replay after a restart", 5, await EndedAsync(5), 0));
        // The replays reserved nothing: a new VM takes all the room there is.
        var usage = await client.UsageAsync(host, Ct);
        var (fresh, freshCapability) = (Guid.NewGuid(), RandomNumberGenerator.GetBytes(32));
        await client.StartVmAsync(host, fresh, MigrationMode.Semigrate, usage.CapacityPages - usage.UsedPages, freshCapability, Ct);
        await client.ReleaseAsync(host, fresh, freshCapability, Ct);

        Print(rows);
        Assert.All(rows, r => Assert.Equal(r.Tries, r.Refused));
        Assert.All(rows, r => Assert.Equal(0, r.DataLost));
        await server.DisposeAsync();
        store.Dispose();
        Directory.Delete(folder, recursive: true);
    }

    [Fact]
    public async Task The_control_queue_reaches_no_vm_and_a_vm_started_without_a_capability_reserves_nothing()
    {
        var host = rabbit.Name("sub-control");
        const long capacity = 5_000;
        var store = new InMemoryPageStore(capacity);
        // As a host's worker starts it: capabilities are the host's own HMACs of migration and VM.
        var secret = RandomNumberGenerator.GetBytes(32);
        byte[] Issue(Guid migration, Guid vm) => HMACSHA256.HashData(secret, migration.ToByteArray().Concat(vm.ToByteArray()).ToArray());
        await using var server = await PageServer.StartAsync(rabbit.Connection, new MemoryServerOptions { Host = host, CapacityPages = capacity }, store, NullLogger.Instance, Ct,
            issued: (migration, vm, shown) => CryptographicOperations.FixedTimeEquals(Issue(migration, vm), shown));
        await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
        await using var raw = await RawSender.StartAsync(rabbit.Connection);
        var (victim, migrationId) = (Guid.NewGuid(), Guid.NewGuid());
        var capability = Issue(migrationId, victim);
        var victimPages = Pages(100);
        await client.StartVmAsync(host, victim, MigrationMode.Semigrate, 100, capability, Ct, migrationId);
        await client.StoreAsync(host, victim, victimPages, Ct);
        var control = PageQueues.Control(host);
        var rows = new List<Row>();

        // Every request of a VM's, sent to the queue every broker user can name: refused, whatever it shows.
        using var key = Sealing.DataKey.Generate();
        using var someHost = Sealing.HostKeyPair.Generate();
        var frames = new (string Attack, Func<ulong, byte[]> Frame)[]
        {
            ("fetch sent to the control queue", id => PageFrame.BuildFetch(victim, id, [1UL, 2UL])),
            ("store sent to the control queue", id => PageFrame.BuildPages(FrameKind.Store, victim, id, Pages(2, 7))),
            ("page-out sent to the control queue", id => PageFrame.BuildPages(FrameKind.PageOut, victim, id, Pages(2, 9))),
            ("channel key sent to the control queue", id => PageFrame.Build(FrameKind.ChannelKey, victim, id, 0, Sealing.KeyWrap.Wrap(key, someHost.PublicKey, "x"))),
            ("release, with the capability, sent to the control queue", id => PageFrame.Build(FrameKind.Release, victim, id, 0, capability)),
        };
        foreach (var (attack, frame) in frames)
        {
            var refused = 0;
            for (var i = 0; i < 10; i++)
            {
                refused += IsError(await raw.RequestAsync(control, frame((ulong)i)), PageError.Forbidden) ? 1 : 0;
            }
            rows.Add(new(attack, 10, refused, await LostAsync(client, host, victim, victimPages)));
        }

        // StartVm without a capability, asking for all the room there is: refused, nothing reserved, and
        // a real StartPaging after them gets all of it.
        var flood = 0;
        for (var i = 0; i < 20; i++)
        {
            var payload = new byte[9];
            payload[0] = (byte)MigrationMode.Semigrate;
            BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(1), capacity);
            flood += IsError(await raw.RequestAsync(control, PageFrame.Build(FrameKind.StartVm, Guid.NewGuid(), (ulong)i, 0, payload)), PageError.Forbidden) ? 1 : 0;
        }
        // Made-up capabilities (with a migration's id or without), all the room asked for: refused likewise.
        var madeUp = 0;
        for (var i = 0; i < 20; i++)
        {
            var e = await Record.ExceptionAsync(() => client.StartVmAsync(host, Guid.NewGuid(), MigrationMode.Semigrate, capacity, RandomNumberGenerator.GetBytes(32), Ct,
                i % 2 == 0 ? Guid.NewGuid() : null));
            madeUp += e is PageProtocolException { Code: PageError.Forbidden } ? 1 : 0;
        }
        var (fresh, freshMigration) = (Guid.NewGuid(), Guid.NewGuid());
        await client.StartVmAsync(host, fresh, MigrationMode.Semigrate, capacity - 100, Issue(freshMigration, fresh), Ct, freshMigration);
        rows.Add(new("StartVm without a capability, before a real one", 20, flood, await LostAsync(client, host, victim, victimPages)));
        rows.Add(new("StartVm with a capability the host did not issue, before a real one", 20, madeUp, await LostAsync(client, host, victim, victimPages)));

        Print(rows);
        Assert.All(rows, r => Assert.Equal(r.Tries, r.Refused));
        Assert.All(rows, r => Assert.Equal(0, r.DataLost));
        Assert.Equal(100, await client.ReleaseAsync(host, victim, capability, Ct)); // its holder, on its own queue, still can
    }

    [Fact]
    public async Task A_file_backed_server_that_dies_right_after_an_ack_has_every_acked_page()
    {
        var host = rabbit.Name("sub-crash");
        var folder = Directory.CreateTempSubdirectory("semigrate-crash-").FullName;
        var vm = Guid.NewGuid();
        var pages = Pages(512);
        await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
        var connection = await new ConnectionFactory { Uri = rabbit.Uri }.CreateConnectionAsync(Ct);
        var server = await PageServer.StartAsync(connection, new MemoryServerOptions { Host = host, CapacityPages = 10_000, AllowVmsWithoutCapability = true }, new FilePageStore(folder, 10_000),
            NullLogger.Instance, Ct);
        await client.StartVmAsync(host, vm, MigrationMode.Semigrate, 512, Ct);
        foreach (var batch in pages.Chunk(64))
        {
            await client.StoreAsync(host, vm, batch, Ct);
        }
        // Acked: the server dies at once, its store never closed (a process killed here; a machine that
        // loses power keeps the same, since each store is flushed to disk before its ack).
        await connection.AbortAsync(Ct);

        using var reopened = new FilePageStore(folder, 10_000);
        var lost = pages.Count(p => reopened.Get(vm, p.Pfn) is not { } got || !PageFrame.ReadRecord(got).Body.Span.SequenceEqual(p.Body.Span));
        Print([new Row($"file-backed server killed after {pages.Count} acked pages", 1, 1, lost)]);
        Assert.Equal(0, lost);
        await server.DisposeAsync();
        Directory.Delete(folder, recursive: true);
    }

    private static byte[] UsageReport()
    {
        var payload = new byte[16 + 2 * 24];
        BinaryPrimitives.WriteInt64LittleEndian(payload, 1000);
        BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(8), 10);
        Guid.NewGuid().TryWriteBytes(payload.AsSpan(16));
        Guid.NewGuid().TryWriteBytes(payload.AsSpan(40));
        return PageFrame.Build(FrameKind.UsageReport, Guid.Empty, 1, 2, payload);
    }

    /// <summary>One of: flipped bits, random bytes, a count made huge or off by a little, another kind,
    /// truncated, extended with junk.</summary>
    private static byte[] Mutate(byte[] seed, Random random)
    {
        var frame = seed.ToArray();
        switch (random.Next(6))
        {
            case 0:
                for (var n = random.Next(1, 8); n > 0; n--)
                {
                    var bit = random.Next(frame.Length * 8);
                    frame[bit / 8] ^= (byte)(1 << (bit % 8));
                }
                return frame;
            case 1:
                for (var n = random.Next(1, 16); n > 0; n--)
                {
                    frame[random.Next(frame.Length)] = (byte)random.Next(256);
                }
                return frame;
            case 2:
                BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(32), random.Next(2) == 0 ? (uint)random.Next() : (uint)(BinaryPrimitives.ReadUInt32LittleEndian(frame.AsSpan(32)) + random.Next(-2, 3)));
                return frame;
            case 3:
                frame[5] = (byte)random.Next(256);
                return frame;
            case 4:
                return frame[..random.Next(frame.Length)];
            default:
                var longer = new byte[frame.Length + random.Next(1, 5000)];
                frame.CopyTo(longer, 0);
                random.NextBytes(longer.AsSpan(frame.Length));
                return longer;
        }
    }

    private static void Print(IEnumerable<Row> rows)
    {
        var output = TestContext.Current.TestOutputHelper;
        output?.WriteLine($"{"attack",-56} {"tries",6} {"refused",8} {"data lost",10}");
        foreach (var r in rows)
        {
            output?.WriteLine($"{r.Attack,-56} {r.Tries,6} {r.Refused,8} {r.DataLost,10}");
        }
    }
}
