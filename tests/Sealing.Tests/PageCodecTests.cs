using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing.Tests;

public sealed class PageCodecTests : IDisposable
{
    private static readonly Guid Vm = Guid.NewGuid();
    private readonly DataKey key = DataKey.Generate();
    private readonly PageSealer sealer;
    private readonly PageOpener opener;
    private readonly PageCodec codec;
    private readonly PageTable table = new(16);

    public PageCodecTests()
    {
        sealer = key.CreateSealer(Vm, 1);
        opener = new PageOpener(key, Vm);
        codec = new PageCodec(MigrationMode.Semigrate, Vm, sealer, opener);
    }

    public void Dispose()
    {
        sealer.Dispose();
        opener.Dispose();
        key.Dispose();
    }

    private static byte[] Page(byte fill) => Enumerable.Repeat(fill, 4096).ToArray();

    [Theory]
    [InlineData(MigrationMode.Semigrate, PageClass.Zero, PageClass.Zero)]
    [InlineData(MigrationMode.Semigrate, PageClass.Plain, PageClass.Plain)]
    [InlineData(MigrationMode.Semigrate, PageClass.Sealed, PageClass.Sealed)]
    [InlineData(MigrationMode.AllEnc, PageClass.Zero, PageClass.Sealed)]
    [InlineData(MigrationMode.AllEnc, PageClass.Plain, PageClass.Sealed)]
    [InlineData(MigrationMode.NoEnc, PageClass.Zero, PageClass.Plain)]
    [InlineData(MigrationMode.NoEnc, PageClass.Sealed, PageClass.Plain)]
    public void Each_mode_puts_each_class_on_the_wire_its_own_way(MigrationMode mode, PageClass classified, PageClass wire)
    {
        var c = new PageCodec(mode, Vm, sealer, opener);
        var page = classified == PageClass.Zero ? new byte[4096] : Page(0x5a);
        var record = c.Encode(3, 1, classified, page);
        Assert.Equal(wire, record.Class);
        Assert.Equal(PageRecord.BodySize(wire), record.Body.Length);
        table.Set(3, wire, 1);
        var back = new byte[4096];
        c.Open(3, record, table, "sub-1", back);
        Assert.Equal(page, back);
    }

    [Fact]
    public void Open_refuses_a_wrong_page_class_or_version_naming_page_and_host()
    {
        table.Set(4, PageClass.Sealed, 2);
        var sealedV2 = codec.Encode(4, 2, PageClass.Sealed, Page(1));
        var cases = new (PageRecord Record, string Why)[]
        {
            (codec.Encode(5, 2, PageClass.Sealed, Page(1)), "asked for page 0x4, got page 0x5"),
            (PageRecord.Zero(4, 2), "expected a Sealed page, got Zero"),
            (new PageRecord(PageClass.Plain, 4, 2, 0, Page(1)), "expected a Sealed page, got Plain"),
            (codec.Encode(4, 1, PageClass.Sealed, Page(1)), "expected version 2, got 1"),
            (sealedV2 with { Body = sealedV2.Body[..100] }, "body of 100 bytes"),
            (sealedV2 with { KeyEpoch = 7 }, "GCM tag does not verify"),
        };
        foreach (var (record, why) in cases)
        {
            var e = Assert.Throws<PageIntegrityException>(() => codec.Open(4, record, table, "sub-9", new byte[4096]));
            Assert.Contains(why, e.Message, StringComparison.Ordinal);
            Assert.Equal((4UL, "sub-9"), (e.Pfn, e.Host));
        }
    }

    [Fact]
    public void A_plain_page_is_authenticated_like_a_sealed_one()
    {
        table.Set(6, PageClass.Plain, 1);
        var page = Page(0x42);
        var plain = codec.Encode(6, 1, PageClass.Plain, page);
        Assert.Equal(page, plain.Body.Slice(PageRecord.NonceSize, PageRecord.PageSize).ToArray()); // travels as-is

        var flipped = plain.Body.ToArray();
        flipped[PageRecord.NonceSize + 100] ^= 1;
        var moved = codec.Encode(7, 1, PageClass.Plain, page);
        var asPlain = codec.Encode(6, 1, PageClass.Sealed, page);
        var cases = new (PageRecord Record, string Why)[]
        {
            (plain with { Body = flipped }, "GMAC tag does not verify"),
            (moved with { Pfn = 6 }, "GMAC tag does not verify"),
            (plain with { Version = 1, KeyEpoch = plain.KeyEpoch + 1 }, "GMAC tag does not verify"),
            (asPlain with { Class = PageClass.Plain }, "GMAC tag does not verify"), // a sealed page's tag is no plain page's
        };
        foreach (var (record, why) in cases)
        {
            var back = Enumerable.Repeat((byte)0xee, 4096).ToArray();
            var e = Assert.Throws<PageIntegrityException>(() => codec.Open(6, record, table, "sub-3", back));
            Assert.Contains(why, e.Message, StringComparison.Ordinal);
            Assert.All(back, b => Assert.Equal(0, b)); // nothing unchecked is left behind
        }

        // And a plain page's tag is no sealed page's.
        table.Set(6, PageClass.Sealed, 1);
        var relabelled = Assert.Throws<PageIntegrityException>(() => codec.Open(6, plain with { Class = PageClass.Sealed }, table, "sub-3", new byte[4096]));
        Assert.Contains("GCM tag does not verify", relabelled.Message, StringComparison.Ordinal);
    }
}
