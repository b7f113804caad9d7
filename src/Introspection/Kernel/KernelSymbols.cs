using SEmigrate.Guest.Memory;

namespace SEmigrate.Introspection.Kernel;

/// <summary>Where this boot of the kernel put things (KASLR): from VMCOREINFO and kallsyms decoded
/// out of guest memory, checked against each other and against the layout's build id.</summary>
public sealed record KernelSymbols(
    string Release,
    string BuildId,
    string VmcoreInfoSource,
    ulong KernelOffset,
    ulong PhysBase,
    ulong InitTopPgt,
    bool FiveLevel,
    ulong NodeData,
    int NodeDataLength,
    int PageBuddyMapcount,
    ulong InitTask,
    ulong PageOffsetBase,
    ulong VmemmapBase,
    int KallsymsCount)
{
    private static readonly HashSet<string> Wanted = ["init_task", "page_offset_base", "vmemmap_base", "init_top_pgt"];

    /// <summary>MAX_NUMNODES, which LENGTH(node_data) is: NODES_SHIFT is at most 10 on x86-64.</summary>
    public const int MaxNumNodes = 1 << 10;

    /// <summary>KERNEL_IMAGE_SIZE is 512 MiB, or 1 GiB with KASLR (asm/page_64_types.h); above it lie
    /// modules, which are not mapped linearly from phys_base.</summary>
    public const ulong MaxKernelImageSize = 1UL << 30;

    /// <summary>Finds the symbols and builds the kernel address space, within <paramref name="budget"/> (default:
    /// <see cref="Walks.WalkBudget.For"/> the guest's size); throws GuestDataException when the guest's data is
    /// inconsistent or the layout belongs to another kernel.</summary>
    public static (KernelSymbols Symbols, AddressSpace Space) Resolve(GuestMemory memory, KernelLayout layout, Walks.WalkBudget? budget = null)
    {
        budget ??= Walks.WalkBudget.For(memory.GuestPages);
        layout.Check();
        VmcoreInfo info;
        try
        {
            info = VmcoreInfo.Find(memory, layout.BuildId);
        }
        catch (InvalidDataException e)
        {
            throw new GuestDataException(e.Message);
        }
        if (layout.BuildId.Length > 0 && !string.Equals(layout.BuildId, info.BuildId, StringComparison.OrdinalIgnoreCase))
        {
            throw new GuestDataException(
                $"wrong kernel profile: it is for build {layout.BuildId} ({layout.Release}), the guest runs build {info.BuildId} ({info.Release})");
        }
        if (layout.BuildId.Length == 0 && layout.Release != info.Release)
        {
            throw new GuestDataException($"wrong kernel profile: it is for {layout.Release}, the guest runs {info.Release}");
        }
        try
        {
            var physBase = unchecked((ulong)info.Number("phys_base"));
            var imageSize = info.Has("NUMBER(KERNEL_IMAGE_SIZE)") ? info.Number("KERNEL_IMAGE_SIZE") : (long)MaxKernelImageSize;
            if (imageSize is <= 0 or > (long)MaxKernelImageSize)
            {
                throw new GuestDataException($"VMCOREINFO says KERNEL_IMAGE_SIZE is {imageSize}: the kernel's is at most {MaxKernelImageSize}");
            }
            var nodes = info.Length("node_data");
            if (nodes is <= 0 or > MaxNumNodes)
            {
                throw new GuestDataException($"VMCOREINFO says LENGTH(node_data) is {nodes}: MAX_NUMNODES is 1 to {MaxNumNodes}");
            }
            var fiveLevel = info.Has("NUMBER(pgtable_l5_enabled)") && info.Number("pgtable_l5_enabled") != 0;
            var rootVa = info.Symbol("init_top_pgt");
            if (rootVa < AddressSpace.StartKernelMap)
            {
                throw new GuestDataException($"init_top_pgt at 0x{rootVa:x} is not in the kernel image");
            }
            var space = new AddressSpace(memory, physBase, (ulong)imageSize, rootVa - AddressSpace.StartKernelMap + physBase, fiveLevel);
            var (found, count) = Kallsyms.Lookup(space, info, Wanted, budget);
            foreach (var name in Wanted.Where(n => !found.ContainsKey(n)))
            {
                throw new GuestDataException($"kallsyms has no {name}");
            }
            if (found["init_top_pgt"] != rootVa)
            {
                throw new GuestDataException(
                    $"kallsyms says init_top_pgt is at 0x{found["init_top_pgt"]:x}, VMCOREINFO says 0x{rootVa:x}: inconsistent guest data");
            }
            var pageOffsetBase = ReadPointer(space, found["page_offset_base"], "page_offset_base");
            var vmemmapBase = ReadPointer(space, found["vmemmap_base"], "vmemmap_base");
            // KASLR places both on 1 GiB boundaries in the upper half.
            if ((pageOffsetBase & 0x3fff_ffff) != 0 || pageOffsetBase < 0xff00_0000_0000_0000
                || (vmemmapBase & 0x3fff_ffff) != 0 || vmemmapBase < 0xff00_0000_0000_0000)
            {
                throw new GuestDataException($"page_offset_base 0x{pageOffsetBase:x} or vmemmap_base 0x{vmemmapBase:x} is not a kernel region");
            }
            space.PageOffsetBase = pageOffsetBase;
            var symbols = new KernelSymbols(info.Release, info.BuildId, info.Source, info.KernelOffset, physBase, rootVa, fiveLevel,
                info.Symbol("node_data"), (int)nodes,
                (int)info.Number("PAGE_BUDDY_MAPCOUNT_VALUE"), found["init_task"], pageOffsetBase, vmemmapBase, count);
            return (symbols, space);
        }
        catch (KeyNotFoundException e)
        {
            throw new GuestDataException(e.Message);
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new GuestDataException($"VMCOREINFO holds a malformed value: {e.Message}");
        }
    }

    private static ulong ReadPointer(AddressSpace space, ulong va, string name) =>
        space.TryReadUInt64(va, out var value) ? value : throw new GuestDataException($"{name} at 0x{va:x} is not in guest memory");
}
