using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Kernel;
using SEmigrate.TestSupport;

namespace SEmigrate.Introspection.Tests;

/// <summary>The offsets our BTF reader finds must equal the ones the kernel itself publishes in
/// VMCOREINFO for crash tools: two independent sources.</summary>
public class LayoutTests(RealGuestFixture fixture)
{
    [Fact]
    public void BTF_offsets_agree_with_the_kernels_own_VMCOREINFO()
    {
        var layout = KernelLayout.FromImage(KernelImage.Load(fixture.Guest.KernelPath));
        using var memory = GuestMemory.OpenElfDump(fixture.Guest.DumpPath);
        var info = VmcoreInfo.Find(memory);
        long Get(string key) => long.Parse(info.Get(key), System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(Get("SIZE(page)"), layout.PageStructSize);
        Assert.Equal(Get("SIZE(zone)"), layout.ZoneSize);
        Assert.Equal(Get("SIZE(free_area)"), layout.FreeAreaSize);
        Assert.Equal(Get("OFFSET(zone.free_area)"), layout.ZoneFreeArea);
        Assert.Equal(Get("OFFSET(zone.vm_stat)"), layout.ZoneVmStat);
        Assert.Equal(Get("OFFSET(free_area.free_list)"), layout.FreeAreaFreeList);
        Assert.Equal(Get("OFFSET(pglist_data.node_zones)"), layout.NodeZones);
        Assert.Equal(Get("OFFSET(list_head.next)"), layout.ListNext);
        Assert.Equal(Get("OFFSET(list_head.prev)"), layout.ListPrev);
        Assert.Equal(Get("OFFSET(page.lru)"), layout.PageBuddyList); // buddy_list shares lru's place
        Assert.Equal(Get("LENGTH(zone.free_area)"), layout.MaxOrder);
        Assert.Equal(Get("LENGTH(free_area.free_list)"), layout.MigrateTypes);
        Assert.Equal(Get("NUMBER(NR_FREE_PAGES)"), layout.NrFreePagesIndex);
        Assert.Equal(info.BuildId, layout.BuildId);
        Assert.Equal(info.Release, layout.Release);
    }

    [Fact]
    public void The_layout_is_cached_beside_the_kernel_and_reused()
    {
        var kernel = Path.Combine(Directory.CreateTempSubdirectory("semigrate-layout-").FullName, "vmlinuz");
        File.Copy(fixture.Guest.KernelPath, kernel);
        var first = KernelLayout.Load(kernel);
        Assert.True(File.Exists(kernel + ".layout.json"));
        Assert.Equal(first, KernelLayout.Load(kernel));
        File.WriteAllText(kernel + ".layout.json", "{ not json");
        Assert.Equal(first, KernelLayout.Load(kernel));
        Directory.Delete(Path.GetDirectoryName(kernel)!, recursive: true);
    }
}
