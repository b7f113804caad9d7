using System.Buffers.Binary;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Introspection.Kernel;

/// <summary>Kernel virtual to guest-physical translation on x86-64: the kernel image mapping (linear,
/// from phys_base), the direct map (page_offset_base), and anything else through the page tables
/// from init_top_pgt (4- or 5-level, 2M and 1G leaves). Every read is checked against guest memory.</summary>
public sealed class AddressSpace(GuestMemory memory, ulong physBase, ulong kernelImageSize, ulong rootTablePhys, bool fiveLevel)
{
    public const ulong StartKernelMap = 0xffffffff80000000;
    private const ulong AddressMask = 0x000f_ffff_ffff_f000;
    private const ulong Present = 1, Huge = 1 << 7;

    private readonly Dictionary<ulong, ulong> tlb = [];

    public GuestMemory Memory => memory;

    public ulong RootTablePhys => rootTablePhys;

    public bool FiveLevel => fiveLevel;

    /// <summary>Start of the direct map, once known (read from page_offset_base).</summary>
    public ulong? PageOffsetBase { get; set; }

    public bool TryTranslate(ulong va, out ulong pa)
    {
        if (va >= StartKernelMap && va - StartKernelMap < kernelImageSize)
        {
            pa = va - StartKernelMap + physBase;
            return true;
        }
        if (PageOffsetBase is { } pob && va >= pob && va - pob < memory.PfnLimit << GuestMemory.PageShift)
        {
            pa = va - pob;
            return true;
        }
        var page = va & ~0xfffUL;
        if (tlb.TryGetValue(page, out var cached))
        {
            pa = cached | (va & 0xfff);
            return true;
        }
        if (!TryWalk(rootTablePhys, va, out pa))
        {
            return false;
        }
        if (tlb.Count > 1 << 16)
        {
            tlb.Clear();
        }
        tlb[page] = pa & ~0xfffUL;
        return true;
    }

    /// <summary>One page-table walk for one address.</summary>
    public bool TryWalk(ulong rootPhys, ulong va, out ulong pa)
    {
        pa = 0;
        var table = rootPhys & AddressMask;
        for (var level = fiveLevel ? 5 : 4; level >= 1; level--)
        {
            var index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
            if (!memory.TryReadUInt64(table + index * 8, out var entry) || (entry & Present) == 0)
            {
                return false;
            }
            if (level is 2 or 3 && (entry & Huge) != 0)
            {
                var span = 1UL << (12 + 9 * (level - 1));
                pa = (entry & AddressMask & ~(span - 1)) | (va & (span - 1));
                return true;
            }
            table = entry & AddressMask;
        }
        pa = table | (va & 0xfff);
        return true;
    }

    public bool TryRead(ulong va, Span<byte> destination)
    {
        while (destination.Length > 0)
        {
            var inPage = (int)(va & 0xfff);
            var n = Math.Min(destination.Length, 4096 - inPage);
            if (!TryTranslate(va, out var pa) || !memory.TryRead(pa, destination[..n]))
            {
                return false;
            }
            destination = destination[n..];
            va += (ulong)n;
        }
        return true;
    }

    public bool TryReadUInt64(ulong va, out ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        var ok = TryRead(va, b);
        value = ok ? BinaryPrimitives.ReadUInt64LittleEndian(b) : 0;
        return ok;
    }

    public bool TryReadInt32(ulong va, out int value)
    {
        Span<byte> b = stackalloc byte[4];
        var ok = TryRead(va, b);
        value = ok ? BinaryPrimitives.ReadInt32LittleEndian(b) : 0;
        return ok;
    }

    /// <summary>A NUL-terminated string of at most <paramref name="max"/> bytes, printable ASCII only.</summary>
    public bool TryReadString(ulong va, int max, out string value)
    {
        Span<byte> b = stackalloc byte[max];
        value = "";
        if (!TryRead(va, b))
        {
            return false;
        }
        var end = b.IndexOf((byte)0);
        var s = end < 0 ? b : b[..end];
        foreach (var c in s)
        {
            if (c is < 0x20 or > 0x7e)
            {
                return false;
            }
        }
        value = System.Text.Encoding.ASCII.GetString(s);
        return true;
    }
}
