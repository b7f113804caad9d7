using System.Buffers.Binary;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>A sub-host that lies on page-in is caught by the main host every time, before any byte
/// reaches the guest, and each catch is a security event naming the page and the host.</summary>
public class AttackTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    private const int SealedPfnStep = 3; // pages 2, 5, 8, ... are sealed (PagingHarness.GuestPage)

    private static IEnumerable<ulong> SealedPages() =>
        Enumerable.Range(0, PagingHarness.Pages).Select(p => (ulong)p).Where(p => PagingHarness.GuestPage(p).Class == PageClass.Sealed);

    private static byte[] Marker(PageClass c, byte[] stored)
    {
        var fake = new byte[PageRecord.HeaderSize + PageRecord.BodySize(c)];
        stored.AsSpan(0, PageRecord.HeaderSize).CopyTo(fake);
        fake[0] = (byte)c;
        return fake;
    }

    public static TheoryData<string> Attacks => ["flip a bit", "another page's bytes", "another page's bytes relabelled", "an older version",
        "an older version relabelled", "truncated", "a zero marker", "a plain marker"];

    [Theory]
    [MemberData(nameof(Attacks))]
    public async Task Every_lie_is_caught_every_time(string attack)
    {
        var evil = new TamperingStore(new InMemoryPageStore(10_000));
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate, evil);
        await h.TransferAsync();
        // Every sealed page is paged out once, so an older version exists to replay.
        foreach (var pfn in SealedPages())
        {
            await h.Pager.PageOutAsync(pfn, Enumerable.Repeat((byte)pfn, 4096).ToArray());
        }
        var random = new Random(attack.Length);
        evil.Tamper = (vm, pfn, stored, store) =>
        {
            switch (attack)
            {
                case "flip a bit":
                    var bit = random.Next(stored.Length * 8);
                    stored[bit / 8] ^= (byte)(1 << (bit % 8));
                    return stored;
                case "another page's bytes":
                    return store.Honest(vm, pfn + SealedPfnStep) ?? store.Honest(vm, pfn - SealedPfnStep)!;
                case "another page's bytes relabelled":
                    var other = (store.Honest(vm, pfn + SealedPfnStep) ?? store.Honest(vm, pfn - SealedPfnStep))!.ToArray();
                    BinaryPrimitives.WriteUInt64LittleEndian(other.AsSpan(8), pfn);
                    return other;
                case "an older version":
                    return store.History(vm, pfn)[0];
                case "an older version relabelled":
                    var old = store.History(vm, pfn)[0].ToArray();
                    BinaryPrimitives.WriteUInt64LittleEndian(old.AsSpan(16), 2);
                    return old;
                case "truncated":
                    return stored[..random.Next(1, stored.Length)];
                case "a zero marker":
                    return Marker(PageClass.Zero, stored);
                default:
                    return Marker(PageClass.Plain, stored);
            }
        };

        const int rounds = 8;
        var tries = 0;
        var page = new byte[4096];
        for (var round = 0; round < rounds; round++)
        {
            foreach (var pfn in SealedPages())
            {
                page.AsSpan().Fill(0xcc);
                var e = await Assert.ThrowsAsync<PageIntegrityException>(() => h.Pager.PageInAsync(pfn, page));
                Assert.Equal((pfn, h.Host, h.Vm), (e.Pfn, e.Host, e.Vm));
                Assert.True(page.AsSpan().IndexOfAnyExcept((byte)0) < 0 || page.AsSpan().IndexOfAnyExcept((byte)0xcc) < 0,
                    "no byte of a page that failed its check may reach the guest");
                tries++;
            }
        }
        Assert.Equal(tries, h.Violations.Count);
        Assert.True(tries >= 150, $"{tries} tries");

        // The honest store still serves the right pages: detection was not a broken pager.
        evil.Tamper = null;
        await h.Pager.PageInAsync(2, page);
        Assert.Equal(Enumerable.Repeat((byte)2, 4096), page);
    }

    private static IEnumerable<ulong> PlainPages() =>
        Enumerable.Range(0, PagingHarness.Pages).Select(p => (ulong)p).Where(p => PagingHarness.GuestPage(p).Class == PageClass.Plain);

    public static TheoryData<string> PlainAttacks => ["flip", "swap", "rollback"];

    /// <summary>Pages that travel as-is (plain) are not secret but are authenticated all the same: a
    /// sub-host that alters one, swaps two or serves one's version from before a page-out is caught.</summary>
    [Theory]
    [MemberData(nameof(PlainAttacks))]
    public async Task Plain_page_tampering_is_caught_every_time(string attack)
    {
        var evil = new TamperingStore(new InMemoryPageStore(10_000));
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate, evil);
        await h.TransferAsync();
        var plain = PlainPages().ToList();
        if (attack == "rollback")
        {
            // Each plain page is written by the guest and paged out (sealed, version 2): version 1 is stale.
            foreach (var pfn in plain)
            {
                await h.Pager.PageOutAsync(pfn, Enumerable.Repeat((byte)pfn, 4096).ToArray());
            }
        }
        var random = new Random(attack.Length);
        evil.Tamper = (vm, pfn, stored, store) => attack switch
        {
            "flip" => Flip(stored, random),
            "swap" => Relabelled(store.Honest(vm, pfn == plain[0] ? plain[1] : plain[0])!, pfn),
            _ => store.History(vm, pfn)[0],
        };

        var (tries, refused, wrongBytesDelivered) = (0, 0, 0);
        var page = new byte[4096];
        foreach (var pfn in plain)
        {
            tries++;
            page.AsSpan().Fill(0xcc);
            try
            {
                await h.Pager.PageInAsync(pfn, page);
            }
            catch (PageIntegrityException e) when ((e.Pfn, e.Host) == (pfn, h.Host))
            {
                refused++;
            }
            // Whatever happened, the guest's buffer holds nothing the sub-host made up: its old bytes or zeros.
            wrongBytesDelivered += page.AsSpan().IndexOfAnyExcept((byte)0) < 0 || page.AsSpan().IndexOfAnyExcept((byte)0xcc) < 0 ? 0 : 1;
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"{"attack",-46} {"tries",6} {"refused",8} {"data lost",10}");
        TestContext.Current.TestOutputHelper?.WriteLine($"{$"plain page tampering: {attack}",-46} {tries,6} {refused,8} {wrongBytesDelivered,10}");
        Assert.Equal((tries, 0), (refused, wrongBytesDelivered));
        Assert.Equal(tries, h.Violations.Count); // each a security event

        static byte[] Flip(byte[] stored, Random random)
        {
            // A bit of the page's bytes (after header and nonce): what a sub-host would change to mislead the guest.
            var bit = (PageRecord.HeaderSize + PageRecord.NonceSize) * 8 + random.Next(PageRecord.PageSize * 8);
            stored[bit / 8] ^= (byte)(1 << (bit % 8));
            return stored;
        }

        static byte[] Relabelled(byte[] other, ulong pfn)
        {
            var copy = other.ToArray();
            BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(8), pfn);
            return copy;
        }
    }

    [Fact]
    public async Task An_administrator_who_edits_the_store_folder_is_caught()
    {
        var folder = Directory.CreateTempSubdirectory("semigrate-store-").FullName;
        await using (var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate, new FilePageStore(folder, 10_000)))
        {
            await h.TransferAsync();
            var file = Directory.GetFiles(folder).Single();
            await using (var f = new FileStream(file, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            {
                // Page 2 sits in slot 2; overwrite one ciphertext byte.
                f.Position = 2 * FilePageStore.SlotSize + PageRecord.HeaderSize + 100;
                f.WriteByte(0x42);
            }
            var e = await Assert.ThrowsAsync<PageIntegrityException>(() => h.Pager.PageInAsync(2, new byte[4096]));
            Assert.Contains("GCM tag does not verify", e.Message, StringComparison.Ordinal);
        }
        Directory.Delete(folder, recursive: true);
    }
}
