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

/// <summary>A BTF blob is data from a file: types that refer to themselves or to types that do not exist
/// end in an error, never a stack overflow.</summary>
public class HostileBtfTests
{
    /// <summary>Type 1: struct "s" of one anonymous member of type <paramref name="memberType"/>.</summary>
    private static byte[] Blob(uint memberType)
    {
        var strings = "\0s\0"u8.ToArray();
        var types = new byte[12 + 12];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(types, 1); // name "s"
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(types.AsSpan(4), (4u << 24) | 1); // struct, one member
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(types.AsSpan(8), 8);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(types.AsSpan(16), memberType); // anonymous member
        var blob = new byte[24 + types.Length + strings.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(blob, 0xeB9F);
        blob[2] = 1;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(4), 24);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(12), (uint)types.Length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(16), (uint)types.Length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(20), (uint)strings.Length);
        types.CopyTo(blob, 24);
        strings.CopyTo(blob, 24 + types.Length);
        return blob;
    }

    [Fact]
    public void A_struct_that_contains_itself_anonymously_is_an_error_not_a_stack_overflow()
    {
        var btf = new Btf(Blob(memberType: 1));
        var e = Assert.Throws<InvalidDataException>(() => btf.OffsetOf("s", "x"));
        Assert.Contains("nest deeper than 32", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_member_of_a_type_that_does_not_exist_is_an_error()
    {
        var btf = new Btf(Blob(memberType: 99));
        var e = Assert.Throws<InvalidDataException>(() => btf.OffsetOf("s", "x"));
        Assert.Contains("refers to type 99", e.Message, StringComparison.Ordinal);
    }
}
