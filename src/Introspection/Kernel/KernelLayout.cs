using System.Text.Json;

namespace SEmigrate.Introspection.Kernel;

/// <summary>The structure offsets and sizes a walk needs, all read from the kernel's BTF (nothing
/// hard-coded), plus the build id and release that tie them to one kernel build. Small enough to
/// cache as JSON next to the kernel (vmlinuz.layout.json).</summary>
public sealed record KernelLayout(
    string BuildId,
    string Release,
    int ListNext,
    int ListPrev,
    int PageStructSize,
    int PageBuddyList,
    int PagePrivate,
    int PageType,
    int TaskTasks,
    int TaskPid,
    int TaskComm,
    int TaskCommSize,
    int TaskMm,
    int MmPgd,
    int NodeZones,
    int MaxNrZones,
    int ZoneSize,
    int ZoneName,
    int ZoneFreeArea,
    int MaxOrder,
    int FreeAreaSize,
    int FreeAreaFreeList,
    int MigrateTypes,
    int ZoneVmStat,
    int NrFreePagesIndex,
    int TaskFlags = 0,
    int TaskSignal = 0,
    int TaskThreadNode = 0,
    int SignalThreadHead = 0,
    int Schema = 0)
{
    /// <summary>The fields this code needs: a cache written before one was added is rebuilt, not read with zeros.</summary>
    public const int CurrentSchema = 2;

    /// <summary>PF_KTHREAD in task_struct.flags: a kernel thread, which has no mm of its own.</summary>
    public const uint KernelThreadFlag = 0x0020_0000;

    /// <summary>Checks the counts and sizes that walks loop over, read onto the stack or divide by against the
    /// kernel's own limits: a forged or damaged profile (or cache file) is refused, never a stack overflow, a
    /// division by zero or a loop of 2^31 zones.</summary>
    public void Check()
    {
        (string Name, int Value, int Max)[] counts =
        [
            (nameof(MaxNrZones), MaxNrZones, 8), // MAX_NR_ZONES: a zone number fits in ZONES_SHIFT, at most 3 bits
            (nameof(MaxOrder), MaxOrder, 16), // MAX_ORDER - 1 + PAGE_SHIFT <= SECTION_SIZE_BITS, 27 on x86-64
            (nameof(MigrateTypes), MigrateTypes, 8), // a pageblock's migratetype is 3 bits (PB_migratetype_bits)
            (nameof(TaskCommSize), TaskCommSize, 64), // TASK_COMM_LEN is 16; it is read onto the stack
            // struct page (64 bytes), zone (~1.5 KiB) and free_area: walks divide by or multiply with them.
            (nameof(PageStructSize), PageStructSize, 1 << 20),
            (nameof(ZoneSize), ZoneSize, 1 << 20),
            (nameof(FreeAreaSize), FreeAreaSize, 1 << 20),
        ];
        foreach (var (name, value, max) in counts)
        {
            if (value < 1 || value > max)
            {
                throw new GuestDataException($"kernel profile: {name} is {value}, outside the kernel's 1 to {max}: forged or damaged");
            }
        }
    }

    public static KernelLayout FromImage(KernelImage image)
    {
        var btf = new Btf(image.BtfData);
        return new KernelLayout(
            image.BuildId,
            image.Release,
            ListNext: btf.OffsetOf("list_head", "next"),
            ListPrev: btf.OffsetOf("list_head", "prev"),
            PageStructSize: btf.SizeOf("page"),
            PageBuddyList: btf.OffsetOf("page", "buddy_list"),
            PagePrivate: btf.OffsetOf("page", "private"),
            PageType: btf.OffsetOf("page", "page_type"),
            TaskTasks: btf.OffsetOf("task_struct", "tasks"),
            TaskPid: btf.OffsetOf("task_struct", "pid"),
            TaskComm: btf.OffsetOf("task_struct", "comm"),
            TaskCommSize: btf.MemberSize("task_struct", "comm"),
            TaskMm: btf.OffsetOf("task_struct", "mm"),
            MmPgd: btf.OffsetOf("mm_struct", "pgd"),
            NodeZones: btf.OffsetOf("pglist_data", "node_zones"),
            MaxNrZones: btf.ArrayLength("pglist_data", "node_zones"),
            ZoneSize: btf.SizeOf("zone"),
            ZoneName: btf.OffsetOf("zone", "name"),
            ZoneFreeArea: btf.OffsetOf("zone", "free_area"),
            MaxOrder: btf.ArrayLength("zone", "free_area"),
            FreeAreaSize: btf.SizeOf("free_area"),
            FreeAreaFreeList: btf.OffsetOf("free_area", "free_list"),
            MigrateTypes: btf.ArrayLength("free_area", "free_list"),
            ZoneVmStat: btf.OffsetOf("zone", "vm_stat"),
            NrFreePagesIndex: (int)btf.EnumValue("zone_stat_item", "NR_FREE_PAGES"),
            TaskFlags: btf.OffsetOf("task_struct", "flags"),
            TaskSignal: btf.OffsetOf("task_struct", "signal"),
            TaskThreadNode: btf.OffsetOf("task_struct", "thread_node"),
            SignalThreadHead: btf.OffsetOf("signal_struct", "thread_head"),
            Schema: CurrentSchema);
    }

    /// <summary>The layout of the kernel at <paramref name="kernelPath"/>, from its cache file when
    /// that is newer than the kernel, else from the kernel's BTF (and then cached, if writable).</summary>
    public static KernelLayout Load(string kernelPath)
    {
        var cache = kernelPath + ".layout.json";
        if (File.Exists(cache) && File.GetLastWriteTimeUtc(cache) >= File.GetLastWriteTimeUtc(kernelPath))
        {
            try
            {
                if (JsonSerializer.Deserialize<KernelLayout>(File.ReadAllText(cache)) is { Schema: CurrentSchema } cached)
                {
                    return cached;
                }
            }
            catch (JsonException)
            {
                // A damaged cache is rebuilt below.
            }
        }
        var layout = FromImage(KernelImage.Load(kernelPath));
        try
        {
            File.WriteAllText(cache, JsonSerializer.Serialize(layout));
        }
        catch (IOException)
        {
            // Read-only folder: the cache is an optimisation.
        }
        catch (UnauthorizedAccessException)
        {
        }
        return layout;
    }
}
