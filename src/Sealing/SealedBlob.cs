using System.Buffers.Binary;
using System.IO.Compression;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing;

/// <summary>What the source hands the main host besides pages, each a blob of its own kind.
/// Values are wire format (they place the blob's records): never renumber.</summary>
public enum BlobKind : ulong
{
    /// <summary>The class of every page as it travels, so which pages are free and never travelled:
    /// what the main host must know of every page before it serves any.</summary>
    Manifest = 0,

    /// <summary>A running guest's VM core: QEMU's device state without RAM (vCPU registers, devices).</summary>
    DeviceState = 1,

    /// <summary>The running guest's kernel and initramfs, which the main host's QEMU is started with.</summary>
    Kernel = 2,
    Initrd = 3,
}

/// <summary>A blob from the source to the main host: compressed (unless compressed already: the kernel
/// and initramfs), then sealed under the migration's data key as page records at page numbers no guest
/// has (from <see cref="FirstPfn"/> of its kind): it travels, is stored and is checked exactly like a
/// sealed page, and a record moved, altered or replayed does not open. Content: the length of the
/// stored form (8), then the stored form, in 4 KiB pages.</summary>
public static class SealedBlob
{
    /// <summary>Where a kind's records start: 2^62 and up, 2^40 pages apart.</summary>
    public static ulong FirstPfn(BlobKind kind) => (1UL << 62) + ((ulong)kind << 40);

    /// <summary>The most a blob may take, stored: 64 MiB (a 2 TiB guest's map uncompressed).</summary>
    public const int MaxBytes = 64 << 20;

    /// <summary>The kernel and initramfs are compressed already: zlib, even storing without
    /// compression, cost 15-120 ms each way on the demo's 14 MB kernel, inside the guest's downtime.</summary>
    private static bool StoredAsIs(BlobKind kind) => kind is BlobKind.Kernel or BlobKind.Initrd;

    public static List<PageRecord> Seal(BlobKind kind, ReadOnlySpan<byte> content, PageSealer sealer)
    {
        using var stored = new MemoryStream();
        stored.Write(stackalloc byte[8]);
        if (StoredAsIs(kind))
        {
            stored.Write(content);
        }
        else
        {
            using var deflate = new ZLibStream(stored, CompressionLevel.Fastest, leaveOpen: true);
            deflate.Write(content);
        }
        var bytes = stored.GetBuffer().AsSpan(0, (int)stored.Length);
        BinaryPrimitives.WriteInt64LittleEndian(bytes, bytes.Length - 8);
        var records = new List<PageRecord>();
        var page = new byte[PageRecord.PageSize];
        for (var at = 0; at < bytes.Length; at += PageRecord.PageSize)
        {
            Array.Clear(page);
            bytes[at..Math.Min(bytes.Length, at + PageRecord.PageSize)].CopyTo(page);
            records.Add(sealer.Seal(FirstPfn(kind) + (ulong)records.Count, 1, page));
        }
        return records;
    }

    /// <summary>Whether a blob of <paramref name="kind"/> is there at all (its first record).</summary>
    public static bool IsThere(BlobKind kind, Func<ulong, PageRecord?> get) => get(FirstPfn(kind)) is not null;

    /// <summary>Reads a blob's records back through <paramref name="get"/> (null: not there), checks and
    /// opens each, and returns the content (at most <paramref name="maxContent"/> bytes). Every record must
    /// be of the hand-over's key <paramref name="epoch"/> (null: of its first record's): records of two
    /// hand-overs are not spliced into one blob.
    /// Throws <see cref="PageIntegrityException"/> naming the record and <paramref name="host"/>.</summary>
    public static byte[] Open(BlobKind kind, Guid vm, Func<ulong, PageRecord?> get, PageOpener opener, string host, int maxContent, uint? epoch = null)
    {
        var first = FirstPfn(kind);
        var what = kind.ToString().ToLowerInvariant();
        var page = new byte[PageRecord.PageSize];
        void Read(ulong pfn)
        {
            var record = get(pfn) ?? throw new PageIntegrityException(vm, pfn, host, $"{what} record missing: the source's hand-over did not arrive");
            epoch ??= record.KeyEpoch;
            if (record.KeyEpoch != epoch)
            {
                throw new PageIntegrityException(vm, pfn, host, $"{what} record is of key epoch {record.KeyEpoch}, the hand-over's is {epoch}: spliced from another hand-over");
            }
            if (record.Pfn != pfn || record.Class != PageClass.Sealed || record.Version != 1 || !opener.TryOpen(record, page))
            {
                throw new PageIntegrityException(vm, pfn, host, $"{what} record does not open (altered, moved or from another migration)");
            }
        }
        Read(first);
        var length = BinaryPrimitives.ReadInt64LittleEndian(page);
        if (length is <= 0 or > MaxBytes)
        {
            throw new PageIntegrityException(vm, first, host, $"{what} claims {length} bytes");
        }
        if (StoredAsIs(kind) && length > maxContent)
        {
            throw new PageIntegrityException(vm, first, host, $"{what} is larger than the {maxContent} bytes allowed");
        }
        // The stored form without its length: records are read straight into it, past the length's 8 bytes.
        var stored = new byte[length];
        for (long at = 0; at < 8 + length; at += PageRecord.PageSize)
        {
            if (at > 0)
            {
                Read(first + (ulong)(at / PageRecord.PageSize));
            }
            var from = at == 0 ? 8 : 0;
            page.AsSpan(from, (int)Math.Min(PageRecord.PageSize, 8 + length - at) - from).CopyTo(stored.AsSpan((int)(at + from - 8)));
        }
        if (StoredAsIs(kind))
        {
            return stored;
        }
        using var deflate = new ZLibStream(new MemoryStream(stored), CompressionMode.Decompress);
        using var content = new MemoryStream();
        var buffer = new byte[1 << 16];
        for (int n; (n = deflate.Read(buffer)) > 0;)
        {
            if (content.Length + n > maxContent)
            {
                throw new PageIntegrityException(vm, first, host, $"{what} is larger than the {maxContent} bytes allowed");
            }
            content.Write(buffer, 0, n);
        }
        return content.ToArray();
    }
}
