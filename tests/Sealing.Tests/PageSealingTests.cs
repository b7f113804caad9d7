using System.Security.Cryptography;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing.Tests;

public sealed class PageSealingTests : IDisposable
{
    private static readonly Guid Vm = Guid.NewGuid();
    private readonly DataKey key = DataKey.Generate();

    public void Dispose() => key.Dispose();

    private static byte[] Page(int seed)
    {
        var page = new byte[4096];
        new Random(seed).NextBytes(page);
        return page;
    }

    [Fact]
    public void Seal_then_open_gives_the_page_back_and_the_ciphertext_hides_it()
    {
        using var sealer = key.CreateSealer(Vm, 1);
        using var opener = new PageOpener(key, Vm);
        var page = Page(1);
        var record = sealer.Seal(7, 3, page);
        Assert.Equal((PageClass.Sealed, 7UL, 3UL, 1u), (record.Class, record.Pfn, record.Version, record.KeyEpoch));
        Assert.Equal(PageRecord.SealedBodySize, record.Body.Length);
        Assert.False(record.Body.Span.IndexOf(page.AsSpan(0, 32)) >= 0);
        var back = new byte[4096];
        Assert.True(opener.TryOpen(record, back));
        Assert.Equal(page, back);
    }

    [Fact]
    public void Equal_pages_seal_to_different_bytes_unlike_ECB()
    {
        using var sealer = key.CreateSealer(Vm, 1);
        var page = new byte[4096];
        var a = sealer.Seal(1, 1, page).Body.ToArray();
        var b = sealer.Seal(1, 1, page).Body.ToArray();
        Assert.NotEqual(a, b);
        // and within one page, equal 16-byte blocks do not show
        Assert.NotEqual(a.AsSpan(12, 16).ToArray(), a.AsSpan(28, 16).ToArray());
    }

    [Fact]
    public void Nonces_never_repeat_within_an_epoch_even_from_many_threads()
    {
        using var sealer = key.CreateSealer(Vm, 5);
        var page = new byte[4096];
        var nonces = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 20_000, i => nonces.Add(Convert.ToHexString(sealer.Seal((ulong)i, 1, page).Body.Span[..12])));
        Assert.Equal(20_000, nonces.Distinct().Count());
    }

    [Fact]
    public void Should_an_epoch_repeat_across_processes_its_sealers_still_draw_different_nonces_and_both_open()
    {
        // Two processes on copies of one state folder: the same key, VM and epoch, each its own sealer.
        var saved = $"semigrate test {Guid.NewGuid():N}";
        KernelKeyring.Save(saved, key);
        using var copy = KernelKeyring.Load(saved)!;
        KernelKeyring.Erase(saved);
        using var first = key.CreateSealer(Vm, 11);
        using var second = copy.CreateSealer(Vm, 11);
        using var opener = new PageOpener(key, Vm);
        var page = Page(3);
        var (a, b) = (first.Seal(1, 1, page), second.Seal(1, 1, page));

        Assert.NotEqual(a.Body.Span[..12].ToArray(), b.Body.Span[..12].ToArray()); // same counter, another salt
        var back = new byte[4096];
        Assert.True(opener.TryOpen(a, back) && opener.TryOpen(b, back));
        Assert.Equal(page, back);
    }

    [Fact]
    public void An_allenc_sub_host_gets_a_channel_key_of_its_own_that_opens_nothing_else()
    {
        using var a = key.ChannelKey(Vm, "sub-a");
        using var again = key.ChannelKey(Vm, "sub-a");
        using var b = key.ChannelKey(Vm, "sub-b");
        using var sealer = a.CreateSealer(Vm, 1);
        var record = sealer.Seal(4, 1, Page(4));
        var back = new byte[4096];

        using (var sameHost = new PageOpener(again, Vm))
        {
            Assert.True(sameHost.TryOpen(record, back)); // derived alike wherever it is derived
        }
        using (var otherHost = new PageOpener(b, Vm))
        using (var dataKey = new PageOpener(key, Vm))
        using (var otherVm = new PageOpener(key.ChannelKey(Guid.NewGuid(), "sub-a"), Vm))
        {
            Assert.False(otherHost.TryOpen(record, back));
            Assert.False(dataKey.TryOpen(record, back));
            Assert.False(otherVm.TryOpen(record, back));
        }
    }

    [Fact]
    public void An_epoch_gets_one_sealer_only()
    {
        using var first = key.CreateSealer(Vm, 9);
        var e = Assert.Throws<InvalidOperationException>(() => key.CreateSealer(Vm, 9));
        Assert.Contains("nonces would repeat", e.Message, StringComparison.Ordinal);
        using var other = key.CreateSealer(Vm, 10);
    }

    [Theory]
    [InlineData("pfn")]
    [InlineData("version")]
    [InlineData("epoch")]
    [InlineData("vm")]
    [InlineData("key")]
    [InlineData("bit")]
    public void Anything_bound_or_sealed_that_changes_fails_the_tag(string what)
    {
        using var sealer = key.CreateSealer(Vm, 1);
        var record = sealer.Seal(7, 3, Page(2));
        var body = record.Body.ToArray();
        using var otherKey = DataKey.Generate();
        var (r, k, vm) = what switch
        {
            "pfn" => (record with { Pfn = 8 }, key, Vm),
            "version" => (record with { Version = 2 }, key, Vm),
            "epoch" => (record with { KeyEpoch = 2 }, key, Vm),
            "vm" => (record, key, Guid.NewGuid()),
            "key" => (record, otherKey, Vm),
            _ => (record with { Body = Flip(body, 1000) }, key, Vm),
        };
        using var opener = new PageOpener(k, vm);
        var page = new byte[4096];
        page.AsSpan().Fill(0xee);
        Assert.False(opener.TryOpen(r, page));
        Assert.True(page.AsSpan().IndexOfAnyExcept((byte)0) < 0, "a failed open leaves no bytes behind");
    }

    private static byte[] Flip(byte[] bytes, int bit)
    {
        var copy = bytes.ToArray();
        copy[bit / 8] ^= (byte)(1 << (bit % 8));
        return copy;
    }

    [Fact]
    public void A_data_key_unwraps_only_at_its_host_and_in_its_context()
    {
        using var main = HostKeyPair.Generate();
        using var other = HostKeyPair.Generate();
        var wrapped = KeyWrap.Wrap(key, main.PublicKey, "migration-1|main-a");
        using var unwrapped = KeyWrap.Unwrap(wrapped, main, "migration-1|main-a");
        using var sealer = key.CreateSealer(Vm, 1);
        using var opener = new PageOpener(unwrapped, Vm);
        Assert.True(opener.TryOpen(sealer.Seal(1, 1, Page(3)), new byte[4096]));
        Assert.Throws<CryptographicException>(() => KeyWrap.Unwrap(wrapped, other, "migration-1|main-a"));
        Assert.Throws<CryptographicException>(() => KeyWrap.Unwrap(wrapped, main, "migration-2|main-a"));
        wrapped[^20] ^= 1;
        Assert.Throws<CryptographicException>(() => KeyWrap.Unwrap(wrapped, main, "migration-1|main-a"));
        Assert.Equal("DataKey(hidden)", key.ToString());
    }

    [Fact]
    public void A_host_key_pair_persists_with_owner_only_permissions()
    {
        var dir = Directory.CreateTempSubdirectory("semigrate-keys-").FullName;
        var path = Path.Combine(dir, "host.key");
        byte[] publicKey;
        using (var pair = HostKeyPair.LoadOrCreate(path))
        {
            publicKey = pair.PublicKey;
        }
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        using (var again = HostKeyPair.LoadOrCreate(path))
        {
            Assert.Equal(publicKey, again.PublicKey);
        }
        Directory.Delete(dir, recursive: true);
    }
}
