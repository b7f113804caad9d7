using System.Buffers.Binary;
using System.Text;

namespace SEmigrate.Contracts.Paging;

/// <summary>The page protocol's binary frame, independent of the transport (RabbitMQ now, TCP later):
/// <code>
/// 0  "SMPG"          4  version (1)      5  kind          6  flags (0)
/// 8  VM id (16)      24 request id (8)   32 count (4)     36 payload
/// </code>
/// Payloads: Store, PageOut, Pages: count page records (24-byte header + body implied by class).
/// Fetch: count page numbers (8 each). StoreAck, PageOutAck, Released: count = pages.
/// StartVm: mode (1), then optionally the pages expected (8), then optionally the VM's capability (32).
/// Release, Usage: optionally the VM's capability (32; Usage's VM is the header's). UsageReport: capacity,
/// used (8 each), then count x (VM id, pages).
/// StoreAcks: count x (request id (8), pages stored (4)), the acks of several Store requests in one
/// reply. Error: code (2), then count bytes of UTF-8 message. Everything little-endian.</summary>
public readonly ref struct PageFrame
{
    public const int HeaderSize = 36;
    public const byte Version = 1;
    public const int MaxSize = 8 << 20;

    /// <summary>Most pages one Fetch may ask for: its reply (up to ~4.2 MB) stays well within <see cref="MaxSize"/>.</summary>
    public const int MaxFetchPages = 1024;
    private const uint Magic = 0x47504d53; // "SMPG" little-endian

    public FrameKind Kind { get; }

    public Guid Vm { get; }

    public ulong RequestId { get; }

    public int Count { get; }

    public ReadOnlySpan<byte> Payload { get; }

    private PageFrame(FrameKind kind, Guid vm, ulong requestId, int count, ReadOnlySpan<byte> payload)
    {
        Kind = kind;
        Vm = vm;
        RequestId = requestId;
        Count = count;
        Payload = payload;
    }

    /// <summary>Parses and checks the header; throws <see cref="InvalidDataException"/> with the reason.</summary>
    public static PageFrame Parse(ReadOnlySpan<byte> data)
    {
        if (data.Length < HeaderSize)
        {
            throw new InvalidDataException($"frame of {data.Length} bytes is shorter than its {HeaderSize}-byte header");
        }
        if (data.Length > MaxSize)
        {
            throw new InvalidDataException($"frame of {data.Length} bytes exceeds the {MaxSize}-byte limit");
        }
        if (BinaryPrimitives.ReadUInt32LittleEndian(data) != Magic)
        {
            throw new InvalidDataException("not a page-protocol frame (bad magic)");
        }
        if (data[4] != Version)
        {
            throw new InvalidDataException($"page-protocol version {data[4]} is not supported (this side speaks {Version})");
        }
        var count = BinaryPrimitives.ReadUInt32LittleEndian(data[32..]);
        if (count > MaxSize)
        {
            throw new InvalidDataException($"frame claims {count} items");
        }
        return new PageFrame((FrameKind)data[5], new Guid(data.Slice(8, 16)), BinaryPrimitives.ReadUInt64LittleEndian(data[24..]),
            (int)count, data[HeaderSize..]);
    }

    /// <summary>Writes a header into the first <see cref="HeaderSize"/> bytes of <paramref name="destination"/>.</summary>
    public static void WriteHeader(Span<byte> destination, FrameKind kind, Guid vm, ulong requestId, int count)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Magic);
        destination[4] = Version;
        destination[5] = (byte)kind;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[6..], 0);
        vm.TryWriteBytes(destination.Slice(8, 16));
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], requestId);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[32..], (uint)count);
    }

    /// <summary>A frame with only a header (and an optional small payload).</summary>
    public static byte[] Build(FrameKind kind, Guid vm, ulong requestId, int count, ReadOnlySpan<byte> payload = default)
    {
        var frame = new byte[HeaderSize + payload.Length];
        WriteHeader(frame, kind, vm, requestId, count);
        payload.CopyTo(frame.AsSpan(HeaderSize));
        return frame;
    }

    public static int PagesSize(IEnumerable<PageRecord> pages) => HeaderSize + pages.Sum(p => p.WireSize);

    /// <summary>A Store, PageOut or Pages frame.</summary>
    public static byte[] BuildPages(FrameKind kind, Guid vm, ulong requestId, IReadOnlyList<PageRecord> pages)
    {
        var frame = new byte[PagesSize(pages)];
        WriteHeader(frame, kind, vm, requestId, pages.Count);
        var at = HeaderSize;
        foreach (var page in pages)
        {
            at += WritePage(frame.AsSpan(at), page);
        }
        return frame;
    }

    public static int WritePage(Span<byte> destination, PageRecord page)
    {
        if (page.Body.Length != PageRecord.BodySize(page.Class))
        {
            throw new ArgumentException($"a {page.Class} page's body is {PageRecord.BodySize(page.Class)} bytes, not {page.Body.Length}", nameof(page));
        }
        WritePageHeader(destination, page.Class, page.Pfn, page.Version, page.KeyEpoch);
        page.Body.Span.CopyTo(destination[PageRecord.HeaderSize..]);
        return PageRecord.HeaderSize + page.Body.Length;
    }

    public static void WritePageHeader(Span<byte> destination, PageClass c, ulong pfn, ulong version, uint epoch)
    {
        destination[0] = (byte)c;
        destination[1] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[2..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], epoch);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], pfn);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], version);
    }

    /// <summary>The page records of a Store, PageOut or Pages frame, as slices of <paramref name="frame"/>.
    /// Throws <see cref="InvalidDataException"/> on a truncated record, an unknown class or trailing bytes.</summary>
    public static List<PageRecord> ReadPages(ReadOnlyMemory<byte> frame)
    {
        var header = Parse(frame.Span);
        // Bounded by the bytes there before anything is allocated: a record is at least its header.
        if (header.Count > header.Payload.Length / PageRecord.HeaderSize)
        {
            throw new InvalidDataException($"{header.Count} page records cannot fit in {header.Payload.Length} bytes");
        }
        var pages = new List<PageRecord>(header.Count);
        var at = HeaderSize;
        for (var i = 0; i < header.Count; i++)
        {
            var page = ReadRecord(frame[at..], i, header.Count);
            pages.Add(page);
            at += page.WireSize;
        }
        if (at != frame.Length)
        {
            throw new InvalidDataException($"{frame.Length - at} bytes follow the last page record");
        }
        return pages;
    }

    /// <summary>One page record (its wire form) at the start of <paramref name="data"/>, as a slice of it;
    /// <paramref name="index"/> of <paramref name="count"/> only names it in errors.</summary>
    public static PageRecord ReadRecord(ReadOnlyMemory<byte> data, int index = 0, int count = 1)
    {
        // Formatted only on failure: this runs for every page of every bulk message.
        string What() => count == 1 ? "page record" : $"page record {index} of {count}";
        var span = data.Span;
        if (span.Length < PageRecord.HeaderSize)
        {
            throw new InvalidDataException($"{What()} is truncated");
        }
        var c = (PageClass)span[0];
        if (c is not (PageClass.Zero or PageClass.Plain or PageClass.Sealed))
        {
            throw new InvalidDataException($"{What()} has unknown class {span[0]}");
        }
        if (span[1] != 0 || span[2] != 0 || span[3] != 0)
        {
            // Reserved bytes are outside the seal: refusing non-zero ones leaves no bit unchecked.
            throw new InvalidDataException($"{What()} has non-zero reserved bytes");
        }
        var size = PageRecord.BodySize(c);
        if (span.Length < PageRecord.HeaderSize + size)
        {
            throw new InvalidDataException($"{What()} is truncated");
        }
        return new PageRecord(c, BinaryPrimitives.ReadUInt64LittleEndian(span[8..]), BinaryPrimitives.ReadUInt64LittleEndian(span[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(span[4..]), data.Slice(PageRecord.HeaderSize, size));
    }

    /// <summary>The page numbers of a Fetch frame.</summary>
    public static ulong[] ReadPfns(ReadOnlySpan<byte> frame)
    {
        var header = Parse(frame);
        if (header.Count > MaxFetchPages)
        {
            throw new InvalidDataException($"a fetch of {header.Count} pages is more than the {MaxFetchPages} one may ask for");
        }
        if (header.Payload.Length != header.Count * 8)
        {
            throw new InvalidDataException($"fetch of {header.Count} pages carries {header.Payload.Length} bytes");
        }
        var pfns = new ulong[header.Count];
        for (var i = 0; i < pfns.Length; i++)
        {
            pfns[i] = BinaryPrimitives.ReadUInt64LittleEndian(header.Payload[(i * 8)..]);
        }
        return pfns;
    }

    public static byte[] BuildFetch(Guid vm, ulong requestId, ReadOnlySpan<ulong> pfns)
    {
        if (pfns.Length > MaxFetchPages)
        {
            throw new ArgumentException($"a fetch asks for at most {MaxFetchPages} pages, not {pfns.Length}", nameof(pfns));
        }
        var frame = new byte[HeaderSize + pfns.Length * 8];
        WriteHeader(frame, FrameKind.Fetch, vm, requestId, pfns.Length);
        for (var i = 0; i < pfns.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(HeaderSize + i * 8), pfns[i]);
        }
        return frame;
    }

    public static byte[] BuildError(Guid vm, ulong requestId, PageError code, string message)
    {
        var text = Encoding.UTF8.GetBytes(message);
        var payload = new byte[2 + text.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(payload, (ushort)code);
        text.CopyTo(payload, 2);
        return Build(FrameKind.Error, vm, requestId, text.Length, payload);
    }

    /// <summary>One reply that acknowledges several Store requests (request id, pages stored).</summary>
    public static byte[] BuildStoreAcks(IReadOnlyList<(ulong RequestId, int Pages)> acks)
    {
        var frame = new byte[HeaderSize + acks.Count * 12];
        WriteHeader(frame, FrameKind.StoreAcks, Guid.Empty, 0, acks.Count);
        for (var i = 0; i < acks.Count; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(HeaderSize + i * 12), acks[i].RequestId);
            BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(HeaderSize + i * 12 + 8), acks[i].Pages);
        }
        return frame;
    }

    public static List<(ulong RequestId, int Pages)> ReadStoreAcks(ReadOnlySpan<byte> frame)
    {
        var header = Parse(frame);
        if (header.Kind != FrameKind.StoreAcks || header.Payload.Length != header.Count * 12)
        {
            throw new InvalidDataException($"a StoreAcks frame of {header.Count} acks has {header.Payload.Length} payload bytes");
        }
        var acks = new List<(ulong, int)>(header.Count);
        for (var i = 0; i < header.Count; i++)
        {
            acks.Add((BinaryPrimitives.ReadUInt64LittleEndian(header.Payload[(i * 12)..]), BinaryPrimitives.ReadInt32LittleEndian(header.Payload[(i * 12 + 8)..])));
        }
        return acks;
    }

    /// <summary>A UsageReport: the store's capacity and use, and the pages of each VM it lists.</summary>
    public static (long CapacityPages, long UsedPages, Dictionary<Guid, long> PagesPerVm) ReadUsage(ReadOnlySpan<byte> frame)
    {
        var header = Parse(frame);
        if (header.Kind != FrameKind.UsageReport || header.Payload.Length < 16 || (header.Payload.Length - 16) / 24 != header.Count
            || (header.Payload.Length - 16) % 24 != 0)
        {
            throw new InvalidDataException($"a usage report of {header.Count} VMs has {header.Payload.Length} payload bytes");
        }
        var p = header.Payload;
        var perVm = new Dictionary<Guid, long>(header.Count);
        for (var i = 0; i < header.Count; i++)
        {
            perVm[new Guid(p.Slice(16 + i * 24, 16))] = BinaryPrimitives.ReadInt64LittleEndian(p[(32 + i * 24)..]);
        }
        return (BinaryPrimitives.ReadInt64LittleEndian(p), BinaryPrimitives.ReadInt64LittleEndian(p[8..]), perVm);
    }

    public static (PageError Code, string Message) ReadError(ReadOnlySpan<byte> frame)
    {
        var header = Parse(frame);
        if (header.Payload.Length < 2)
        {
            throw new InvalidDataException("error frame without a code");
        }
        return ((PageError)BinaryPrimitives.ReadUInt16LittleEndian(header.Payload), Encoding.UTF8.GetString(header.Payload[2..]));
    }
}
