using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace SEmigrate.Guest.Memory;

/// <summary>Guest-physical memory, memory-mapped from a file, read by page number: a QEMU ELF dump
/// (PT_LOAD ranges with holes between them) or a raw image (one range from address 0; sparse files
/// of tens of GiB work, nothing is read into RAM). An image opened writable keeps a dirty-page bitmap.
/// Reads outside the present ranges fail (TryRead returns false): guest pointers are untrusted.
/// A raw image can also be read with pread, never mapped (<see cref="OpenImageByReads"/>).</summary>
public sealed unsafe class GuestMemory : IDisposable
{
    public const int PageSize = 4096;
    public const int PageShift = 12;

    private readonly MemoryMappedFile? file;
    private readonly MemoryMappedViewAccessor? view;
    private readonly byte* basePointer;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle? reads; // instead of the mapping

    [ThreadStatic]
    private static byte[]? pageRead;
    private readonly MemoryRange[] ranges;
    private readonly ulong[]? dirty;

    private GuestMemory(string path, long fileLength, MemoryRange[] ranges, bool writable, IReadOnlyList<string> problems, bool mapped = true)
    {
        Path = path;
        this.ranges = ranges;
        Problems = problems;
        PfnLimit = ranges.Length == 0 ? 0 : ranges.Max(r => r.EndPfn);
        GuestPages = (ulong)ranges.Sum(r => (decimal)r.Pages);
        if (!mapped)
        {
            reads = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return;
        }
        var access = writable ? MemoryMappedFileAccess.ReadWrite : MemoryMappedFileAccess.Read;
        file = MemoryMappedFile.CreateFromFile(
            new FileStream(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read, FileShare.ReadWrite),
            null, 0, access, HandleInheritability.None, leaveOpen: false);
        view = file.CreateViewAccessor(0, fileLength, access);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        basePointer = p + view.PointerOffset;
        // A worker that locks its memory (PrivateMemory) would otherwise lock every guest page it reads:
        // the guest's memory is its file's, not the worker's own.
        PrivateMemory.Unlock(p, view.PointerOffset + fileLength);
        if (writable)
        {
            dirty = new ulong[(PfnLimit + 63) / 64];
        }
    }

    public string Path { get; }

    /// <summary>The ranges of guest-physical memory, in address order.</summary>
    public IReadOnlyList<MemoryRange> Ranges => ranges;

    /// <summary>One past the highest guest page number.</summary>
    public ulong PfnLimit { get; }

    /// <summary>How many pages the guest has (holes excluded).</summary>
    public ulong GuestPages { get; }

    /// <summary>What was wrong with the file when it was opened (a truncated dump); empty if nothing.</summary>
    public IReadOnlyList<string> Problems { get; }

    public bool IsWritable => dirty is not null;

    /// <summary>Opens an ELF dump or, if the file is not ELF, a raw image (read-only).</summary>
    public static GuestMemory Open(string path)
    {
        Span<byte> head = stackalloc byte[64];
        using (var stream = File.OpenRead(path))
        {
            head = head[..stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false)];
        }
        return Elf64.IsElf64(head) ? OpenElfDump(path) : OpenImage(path);
    }

    /// <summary>Opens a QEMU `dump-guest-memory` ELF file (format elf, paging false).</summary>
    public static GuestMemory OpenElfDump(string path)
    {
        var length = new FileInfo(path).Length;
        Span<byte> head = new byte[(int)Math.Min(length, 1 << 20)];
        using (var stream = File.OpenRead(path))
        {
            stream.ReadExactly(head);
        }
        var problems = new List<string>();
        var ranges = new List<MemoryRange>();
        foreach (var h in Elf64.ProgramHeaders(head).Where(h => h.Type == Elf64.PtLoad && h.MemorySize > 0))
        {
            if (h.PhysicalAddress % PageSize != 0 || h.MemorySize % PageSize != 0)
            {
                problems.Add($"segment at 0x{h.PhysicalAddress:x} is not page-aligned; ignored");
                continue;
            }
            var pages = h.MemorySize / PageSize;
            var available = h.Offset >= (ulong)length ? 0 : ((ulong)length - h.Offset) / PageSize;
            var present = Math.Min(Math.Min(pages, h.FileSize / PageSize), available);
            if (present < pages)
            {
                problems.Add($"dump truncated: segment at 0x{h.PhysicalAddress:x} has {present} of {pages} pages in the file");
            }
            ranges.Add(new MemoryRange(h.PhysicalAddress / PageSize, pages, present, h.Offset));
        }
        if (ranges.Count == 0)
        {
            throw new InvalidDataException($"{path}: no PT_LOAD segments: not a guest memory dump");
        }
        ranges.Sort((a, b) => a.FirstPfn.CompareTo(b.FirstPfn));
        for (var i = 1; i < ranges.Count; i++)
        {
            if (ranges[i].FirstPfn < ranges[i - 1].EndPfn)
            {
                throw new InvalidDataException($"{path}: PT_LOAD segments overlap at pfn 0x{ranges[i].FirstPfn:x}");
            }
        }
        return new GuestMemory(path, length, [.. ranges], writable: false, problems);
    }

    /// <summary>Opens a raw image: guest-physical address N is byte N of the file.</summary>
    public static GuestMemory OpenImage(string path, bool writable = false)
    {
        var length = new FileInfo(path).Length;
        if (length == 0 || length % PageSize != 0)
        {
            throw new InvalidDataException($"{path}: a memory image must be a non-empty multiple of {PageSize} bytes, not {length}");
        }
        var pages = (ulong)length / PageSize;
        return new GuestMemory(path, length, [new MemoryRange(0, pages, pages, 0)], writable, []);
    }

    /// <summary>Opens a raw image read-only that is read with pread and never mapped: for a RAM file this
    /// process serves itself over FUSE. A page fault on a mapping of it would hold this process's mmap
    /// lock while the FUSE server, in this same process, may need that lock to answer: a deadlock.
    /// <see cref="Page"/>'s bytes then stay valid only until the next Page call on the same thread.</summary>
    public static GuestMemory OpenImageByReads(string path)
    {
        var length = new FileInfo(path).Length;
        if (length == 0 || length % PageSize != 0)
        {
            throw new InvalidDataException($"{path}: a memory image must be a non-empty multiple of {PageSize} bytes, not {length}");
        }
        var pages = (ulong)length / PageSize;
        return new GuestMemory(path, length, [new MemoryRange(0, pages, pages, 0)], writable: false, [], mapped: false);
    }

    /// <summary>Creates a sparse, zero-filled image of the given size and opens it writable.</summary>
    public static GuestMemory CreateImage(string path, long bytes)
    {
        if (bytes <= 0 || bytes % PageSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"an image size is a positive multiple of {PageSize}");
        }
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(bytes);
        }
        return OpenImage(path, writable: true);
    }

    private bool TryLocate(ulong pfn, out MemoryRange range)
    {
        // Few ranges (2-3 for QEMU): a linear scan beats a search.
        foreach (var r in ranges)
        {
            if (pfn >= r.FirstPfn && pfn < r.FirstPfn + r.PresentPages)
            {
                range = r;
                return true;
            }
        }
        range = null!;
        return false;
    }

    /// <summary>Whether the page is guest memory (present or not in the file).</summary>
    public bool IsGuestPage(ulong pfn) => ranges.Any(r => pfn >= r.FirstPfn && pfn < r.EndPfn);

    /// <summary>Whether the page's bytes are in the file.</summary>
    public bool IsPresent(ulong pfn) => TryLocate(pfn, out _);

    /// <summary>The page's bytes, valid until this object is disposed (read, not mapped: until the next Page
    /// call on this thread).</summary>
    public ReadOnlySpan<byte> Page(ulong pfn)
    {
        if (!TryLocate(pfn, out var r))
        {
            throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is not in guest memory");
        }
        var offset = r.FileOffset + ((pfn - r.FirstPfn) << PageShift);
        if (reads is null)
        {
            return new ReadOnlySpan<byte>(basePointer + offset, PageSize);
        }
        var page = pageRead ??= new byte[PageSize];
        ReadAt((long)offset, page);
        return page;
    }

    /// <summary>Fills <paramref name="destination"/> from the file at <paramref name="offset"/> (pread).</summary>
    private void ReadAt(long offset, Span<byte> destination)
    {
        while (destination.Length > 0)
        {
            var n = RandomAccess.Read(reads!, destination, offset);
            if (n == 0)
            {
                throw new IOException($"{Path} ended at byte {offset}, inside its guest memory");
            }
            destination = destination[n..];
            offset += n;
        }
    }

    /// <summary>Copies guest-physical bytes; false if any of them is outside present memory.</summary>
    public bool TryRead(ulong physicalAddress, Span<byte> destination)
    {
        while (destination.Length > 0)
        {
            var pfn = physicalAddress >> PageShift;
            if (!TryLocate(pfn, out var r))
            {
                return false;
            }
            var inPage = (int)(physicalAddress & (PageSize - 1));
            var n = Math.Min(destination.Length, PageSize - inPage);
            var offset = r.FileOffset + ((pfn - r.FirstPfn) << PageShift) + (ulong)inPage;
            if (reads is null)
            {
                new ReadOnlySpan<byte>(basePointer + offset, n).CopyTo(destination);
            }
            else
            {
                ReadAt((long)offset, destination[..n]);
            }
            destination = destination[n..];
            physicalAddress += (ulong)n;
        }
        return true;
    }

    public bool TryReadUInt64(ulong physicalAddress, out ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        var ok = TryRead(physicalAddress, b);
        value = ok ? MemoryMarshal.Read<ulong>(b) : 0;
        return ok;
    }

    /// <summary>Writes a whole page of a writable image and marks it dirty.</summary>
    public void WritePage(ulong pfn, ReadOnlySpan<byte> data)
    {
        if (dirty is null)
        {
            throw new InvalidOperationException($"{Path} is open read-only");
        }
        if (data.Length != PageSize)
        {
            throw new ArgumentException($"a page is {PageSize} bytes, not {data.Length}", nameof(data));
        }
        if (!TryLocate(pfn, out var r))
        {
            throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is not in guest memory");
        }
        data.CopyTo(new Span<byte>(basePointer + r.FileOffset + ((pfn - r.FirstPfn) << PageShift), PageSize));
        Interlocked.Or(ref dirty[pfn >> 6], 1UL << (int)(pfn & 63));
    }

    public bool IsDirty(ulong pfn) => dirty is not null && (Volatile.Read(ref dirty[pfn >> 6]) & (1UL << (int)(pfn & 63))) != 0;

    /// <summary>The pages written since the last call, in order; their bits are cleared.</summary>
    public IEnumerable<ulong> TakeDirtyPages()
    {
        if (dirty is null)
        {
            yield break;
        }
        for (var word = 0; word < dirty.Length; word++)
        {
            var bits = Interlocked.Exchange(ref dirty[word], 0);
            while (bits != 0)
            {
                var bit = System.Numerics.BitOperations.TrailingZeroCount(bits);
                yield return ((ulong)word << 6) + (ulong)bit;
                bits &= bits - 1;
            }
        }
    }

    public void Flush() => view?.Flush();

    public void Dispose()
    {
        if (view is not null)
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
        }
        file?.Dispose();
        reads?.Dispose();
    }
}
