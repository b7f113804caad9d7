using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing.Tests;

/// <summary>Blobs (the manifest, a running guest's kernel, initramfs and device state) as the main host
/// gets them: zlib-compressed or stored as-is by kind, sealed as records, and read back only whole,
/// unaltered and within the size allowed.</summary>
public sealed class SealedBlobTests : IDisposable
{
    private static readonly Guid Vm = Guid.NewGuid();
    private readonly DataKey key = DataKey.Generate();

    public void Dispose() => key.Dispose();

    private static byte[] Content(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static Func<ulong, PageRecord?> Lookup(IEnumerable<PageRecord> records)
    {
        var byPfn = records.ToDictionary(r => r.Pfn);
        return pfn => byPfn.GetValueOrDefault(pfn);
    }

    [Theory]
    [InlineData(BlobKind.Manifest, 10_000)]
    [InlineData(BlobKind.DeviceState, 4096 * 3)]
    [InlineData(BlobKind.Kernel, 4096 * 5 + 17)]
    [InlineData(BlobKind.Initrd, 1)]
    public void Every_kind_reads_back_as_sealed(BlobKind kind, int length)
    {
        var content = Content(length, length);
        using var sealer = key.CreateSealer(Vm, 1);
        using var opener = new PageOpener(key, Vm);
        var records = SealedBlob.Seal(kind, content, sealer);

        Assert.All(records, r => Assert.True(r.Pfn >= SealedBlob.FirstPfn(kind)));
        Assert.Equal(content, SealedBlob.Open(kind, Vm, Lookup(records), opener, "main", 1 << 20));
    }

    [Fact]
    public void A_kernel_travels_as_it_is_without_a_compressed_copy_that_would_grow_it()
    {
        var kernel = Content(4096 * 8 - 8, 1); // random bytes: what an already compressed kernel looks like
        using var sealer = key.CreateSealer(Vm, 1);

        // The length (8 bytes) and the kernel fill eight pages exactly; zlib's framing would need a ninth.
        Assert.Equal(8, SealedBlob.Seal(BlobKind.Kernel, kernel, sealer).Count);
    }

    [Fact]
    public void A_blob_larger_than_allowed_is_refused_before_it_is_read()
    {
        using var sealer = key.CreateSealer(Vm, 1);
        using var opener = new PageOpener(key, Vm);
        var records = SealedBlob.Seal(BlobKind.Kernel, Content(10_000, 2), sealer);

        var e = Assert.Throws<PageIntegrityException>(() => SealedBlob.Open(BlobKind.Kernel, Vm, Lookup(records), opener, "main", 9_999));
        Assert.Contains("larger than the 9999 bytes allowed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_record_of_another_kind_put_in_its_place_does_not_open()
    {
        using var sealer = key.CreateSealer(Vm, 1);
        using var opener = new PageOpener(key, Vm);
        var kernel = SealedBlob.Seal(BlobKind.Kernel, Content(10_000, 3), sealer);
        var initrd = SealedBlob.Seal(BlobKind.Initrd, Content(10_000, 4), sealer);
        // The initramfs's second record, renumbered as the kernel's: its tag is bound to its own page number.
        var swapped = kernel.Select(r => r.Pfn == SealedBlob.FirstPfn(BlobKind.Kernel) + 1 ? initrd[1] with { Pfn = r.Pfn } : r);

        var e = Assert.Throws<PageIntegrityException>(() => SealedBlob.Open(BlobKind.Kernel, Vm, Lookup(swapped), opener, "main", 1 << 20));
        Assert.Contains("kernel record does not open", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_record_of_another_hand_over_spliced_in_is_refused_though_it_opens()
    {
        // Two hand-overs of one migration (a retried one): the same key, epochs 1 and 2, the same kernel size.
        using var first = key.CreateSealer(Vm, 1);
        using var second = key.CreateSealer(Vm, 2);
        using var opener = new PageOpener(key, Vm);
        var old = SealedBlob.Seal(BlobKind.Kernel, Content(4096 * 3, 1), first);
        var records = SealedBlob.Seal(BlobKind.Kernel, Content(4096 * 3, 2), second);
        records[2] = old[2]; // its third page from the first hand-over: it opens (same key, page number, version)

        var spliced = Assert.Throws<PageIntegrityException>(() => SealedBlob.Open(BlobKind.Kernel, Vm, Lookup(records), opener, "main", 1 << 20, epoch: 2));
        Assert.Contains("key epoch 1, the hand-over's is 2: spliced from another hand-over", spliced.Message, StringComparison.Ordinal);
        Assert.Equal(SealedBlob.FirstPfn(BlobKind.Kernel) + 2, spliced.Pfn);
        // Without the hand-over's epoch, the first record's stands for it.
        Assert.Throws<PageIntegrityException>(() => SealedBlob.Open(BlobKind.Kernel, Vm, Lookup(records), opener, "main", 1 << 20));
        Assert.Equal(Content(4096 * 3, 1), SealedBlob.Open(BlobKind.Kernel, Vm, Lookup(old), opener, "main", 1 << 20, epoch: 1));
    }
}
