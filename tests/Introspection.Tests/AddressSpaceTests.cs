using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Tests;

/// <summary>Page-table walks over hand-made tables: 4K, 2M and 1G leaves, holes, and the linear
/// kernel-image and direct-map shortcuts.</summary>
public sealed class AddressSpaceTests : IDisposable
{
    private const ulong Present = 1, Huge = 1 << 7;
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-pt-").FullName;
    private readonly GuestMemory memory;

    public AddressSpaceTests()
    {
        memory = GuestMemory.CreateImage(Path.Combine(dir, "pt.img"), 16 << 20);
        // PGD at 0x1000; PUD at 0x2000; PMD at 0x3000; PT at 0x4000.
        Entry(0x1000, 1, 0x2000 | Present);                     // VA 0x0000_0080_0000_0000 -> PUD
        Entry(0x2000, 0, 0x4000_0000 | Present | Huge);          // 1G leaf at PA 1G
        Entry(0x2000, 1, 0x3000 | Present);                      // VA ... + 1G -> PMD
        Entry(0x3000, 0, 0x0060_0000 | Present | Huge);          // 2M leaf at PA 6M
        Entry(0x3000, 1, 0x4000 | Present);                      // VA ... + 1G + 2M -> PT
        Entry(0x4000, 3, 0x0000_9000 | Present);                 // 4K leaf at PA 0x9000
        Entry(0x4000, 4, 0x0000_a000);                           // not present
    }

    private void Entry(ulong table, int index, ulong value)
    {
        var page = memory.Page(table / 4096).ToArray();
        BitConverter.TryWriteBytes(page.AsSpan(index * 8), value);
        memory.WritePage(table / 4096, page);
    }

    [Theory]
    [InlineData(0x0000_0080_0000_1234UL, 0x4000_1234UL)]
    [InlineData(0x0000_0080_3fff_ffffUL, 0x7fff_ffffUL)]
    [InlineData(0x0000_0080_4000_0010UL, 0x0060_0010UL)]
    [InlineData(0x0000_0080_401f_fff0UL, 0x007f_fff0UL)]
    [InlineData(0x0000_0080_4020_3abcUL, 0x0000_9abcUL)]
    public void Walks_4K_2M_and_1G_leaves(ulong va, ulong pa)
    {
        var space = new AddressSpace(memory, 0, 1 << 30, 0x1000, fiveLevel: false);
        Assert.True(space.TryWalk(0x1000, va, out var got));
        Assert.Equal(pa, got);
    }

    [Theory]
    [InlineData(0x0000_0080_4020_4000UL)] // PTE not present
    [InlineData(0x0000_0100_0000_0000UL)] // PGD entry empty
    public void Unmapped_addresses_do_not_translate(ulong va)
    {
        var space = new AddressSpace(memory, 0, 1 << 30, 0x1000, fiveLevel: false);
        Assert.False(space.TryWalk(0x1000, va, out _));
        Assert.False(space.TryTranslate(va, out _));
    }

    [Fact]
    public void Kernel_image_and_direct_map_addresses_are_linear()
    {
        var space = new AddressSpace(memory, physBase: 0x0100_0000, kernelImageSize: 1 << 30, 0x1000, fiveLevel: false)
        {
            PageOffsetBase = 0xffff_8880_0000_0000,
        };
        Assert.True(space.TryTranslate(AddressSpace.StartKernelMap + 0x1234, out var image));
        Assert.Equal(0x0100_1234UL, image);
        Assert.True(space.TryTranslate(0xffff_8880_0000_5000, out var direct));
        Assert.Equal(0x5000UL, direct);
        // Beyond guest memory, the direct map does not apply, and the page tables do not map it.
        Assert.False(space.TryTranslate(0xffff_8880_4000_0000, out _));
    }

    public void Dispose()
    {
        memory.Dispose();
        Directory.Delete(dir, recursive: true);
    }
}
