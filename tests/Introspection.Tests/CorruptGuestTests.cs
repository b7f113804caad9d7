using System.Buffers.Binary;
using System.Diagnostics;
using SEmigrate.Contracts;
using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Kernel;
using SEmigrate.TestSupport;

namespace SEmigrate.Introspection.Tests;

/// <summary>A compromised guest can forge its kernel's structures. Each case must end with a clear
/// diagnostic, the affected pages sealed (fail closed), and no crash or hang.</summary>
public sealed class CorruptGuestTests(RealGuestFixture fixture)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    private KernelLayout Layout => KernelLayout.Load(fixture.Guest.KernelPath);

    /// <summary>The first, second and third entries (list_head addresses) of a free list with at
    /// least three, in the named zone, and that zone's struct zone address.</summary>
    private (ulong Zone, ulong[] Entries) FreeListWithThreeEntries(AddressSpace space, KernelSymbols symbols, string zoneName)
    {
        var layout = Layout;
        Assert.True(space.TryReadUInt64(symbols.NodeData, out var pgdat));
        for (var z = 0; z < layout.MaxNrZones; z++)
        {
            var zone = pgdat + (ulong)layout.NodeZones + (ulong)(z * layout.ZoneSize);
            Assert.True(space.TryReadUInt64(zone + (ulong)layout.ZoneName, out var namePtr));
            if (!space.TryReadString(namePtr, 16, out var name) || name != zoneName)
            {
                continue;
            }
            for (var order = 0; order < layout.MaxOrder; order++)
            {
                for (var mt = 0; mt < layout.MigrateTypes; mt++)
                {
                    var head = zone + (ulong)layout.ZoneFreeArea + (ulong)(order * layout.FreeAreaSize) + (ulong)layout.FreeAreaFreeList + (ulong)(mt * 16);
                    var entries = new List<ulong>();
                    var current = head;
                    while (entries.Count < 3 && space.TryReadUInt64(current, out current) && current != head && current != 0)
                    {
                        entries.Add(current);
                    }
                    if (entries.Count == 3)
                    {
                        return (zone, [.. entries]);
                    }
                }
            }
        }
        throw new InvalidOperationException($"no free list with three entries in zone {zoneName}");
    }

    [Fact]
    public async Task A_cycle_in_a_free_list_untrusts_that_zone_only()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var memory = GuestMemory.OpenElfDump(fixture.Guest.DumpPath))
        {
            var (symbols, space) = KernelSymbols.Resolve(memory, Layout);
            var (_, entries) = FreeListWithThreeEntries(space, symbols, "DMA32");
            // third.next -> first: the list never comes back to its head.
            Assert.True(space.TryTranslate(entries[2] + (ulong)Layout.ListNext, out var pa));
            copy.WriteUInt64(pa, entries[0]);
        }

        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        var dma32 = guest.Result.Zones.Single(z => z.Name == "DMA32");
        Assert.False(dma32.Trusted);
        Assert.Contains("cycle", dma32.Problem, StringComparison.Ordinal);
        Assert.Contains(guest.Result.Diagnostics, d => d.Contains("zone DMA32", StringComparison.Ordinal) && d.Contains("cycle", StringComparison.Ordinal));
        Assert.True(guest.Result.Zones.Single(z => z.Name == "DMA").Trusted);

        var map = guest.Classify("vaultdb", "webapp");
        // DMA32 starts at 16 MiB: none of its pages may be zero any more; DMA's free pages still are.
        for (var pfn = 4096UL; pfn < guest.Memory.PfnLimit; pfn++)
        {
            if (map.IsGuestPage(pfn))
            {
                Assert.NotEqual(PageClass.Zero, map[pfn]);
            }
        }
        Assert.True(map.Zero > 0);
        Assert.Equal(guest.Memory.GuestPages, map.GuestPages);
    }

    [Fact]
    public async Task A_task_list_pointer_outside_memory_ends_the_walk_and_nothing_is_plain()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var vault = good.Result.Tasks.Single(t => t.Comm == "vaultdb");
            Assert.True(space.TryTranslate(vault.Address + (ulong)Layout.TaskTasks + (ulong)Layout.ListNext, out var pa));
            copy.WriteUInt64(pa, 0xffff_dead_beef_0000);
        }

        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        Assert.False(guest.Result.TaskListComplete);
        Assert.Contains(guest.Result.Diagnostics, d => d.StartsWith("task list:", StringComparison.Ordinal)
            && d.Contains("0xffffdeadbeef0000 after pid", StringComparison.Ordinal) && d.Contains("outside guest memory", StringComparison.Ordinal));
        Assert.Contains(guest.Result.Tasks, t => t.Comm == "vaultdb");
        Assert.DoesNotContain(guest.Result.Tasks, t => t.Comm == "webapp");
        // We cannot know who else maps a page: nothing travels as-is. Free memory is still free.
        var map = guest.Classify("vaultdb", "webapp");
        Assert.Equal(0UL, map.Plain);
        Assert.True(map.Zero > 0);
    }

    [Fact]
    public async Task A_truncated_dump_seals_what_is_missing_and_says_so()
    {
        // 128 MiB of the 256. Where KASLR put the kernel decides how far the walks get (a kernel
        // loaded above the cut cannot be walked at all); either way the missing half is sealed.
        using var copy = new DumpCopy(fixture.Guest.DumpPath, truncateTo: 128L << 20);
        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        Assert.Contains(guest.Result.Diagnostics, d => d.StartsWith("dump truncated", StringComparison.Ordinal));
        var map = guest.Classify("vaultdb");
        Assert.Equal(guest.Memory.GuestPages, map.GuestPages);
        for (var pfn = 0UL; pfn < guest.Memory.PfnLimit; pfn++)
        {
            if (map.IsGuestPage(pfn) && !guest.Memory.IsPresent(pfn))
            {
                Assert.Equal(PageClass.Sealed, map[pfn]);
            }
        }
        Assert.True(map.Sealed >= guest.Memory.GuestPages / 2, $"{map.Sealed} sealed of {guest.Memory.GuestPages}");
        if (guest.Result.Symbols is null)
        {
            Assert.Equal(map.GuestPages, map.Sealed); // no walk at all: nothing is known to be free or plain
        }
    }

    [Fact]
    public async Task Another_kernels_profile_is_refused_and_everything_sealed()
    {
        var other = await OtherKernelAsync();
        var layout = KernelLayout.Load(other);
        Assert.NotEqual(Layout.BuildId, layout.BuildId);
        using var guest = await Introspected.WithinAsync(Bound, fixture.Guest.DumpPath, layout);
        Assert.StartsWith("wrong kernel profile: it is for build", Assert.Single(guest.Result.Diagnostics), StringComparison.Ordinal);
        var map = guest.Classify("vaultdb", "webapp");
        Assert.Equal(map.GuestPages, map.Sealed);
    }

    [Fact]
    public async Task A_forged_profile_with_the_right_build_id_breaks_walks_not_the_program()
    {
        var forged = Layout with { TaskTasks = Layout.TaskTasks + 64, ZoneFreeArea = Layout.ZoneFreeArea + 8 };
        using var guest = await Introspected.WithinAsync(Bound, fixture.Guest.DumpPath, forged);
        Assert.Contains(guest.Result.Diagnostics, d => d.StartsWith("task list:", StringComparison.Ordinal));
        Assert.Contains(guest.Result.Diagnostics, d => d.Contains("zone DMA32", StringComparison.Ordinal));
        var map = guest.Classify("vaultdb", "webapp");
        Assert.Equal(0UL, map.Plain);
        Assert.Equal(0UL, map.Zero);
    }

    /// <summary>The guest's RAM as a running guest's file holds it (a raw image: no ELF note, so its
    /// VMCOREINFO is found by scanning RAM), with <paramref name="change"/> applied to its pages.</summary>
    private string RawImage(string folder, Action<GuestMemory> change)
    {
        var image = Path.Combine(folder, "ram");
        File.Delete(image);
        using var dump = GuestMemory.OpenElfDump(fixture.Guest.DumpPath);
        using (var raw = GuestMemory.CreateImage(image, (long)dump.PfnLimit * GuestMemory.PageSize))
        {
            foreach (var r in dump.Ranges)
            {
                for (var pfn = r.FirstPfn; pfn < r.FirstPfn + r.PresentPages; pfn++)
                {
                    raw.WritePage(pfn, dump.Page(pfn));
                }
            }
            change(raw);
            raw.Flush();
        }
        return image;
    }

    /// <summary>A VMCOREINFO text as the guest's kernel writes it, with another build id (or none).</summary>
    private static byte[] PlantedVmcoreInfo(string? buildId)
    {
        var text = "OSRELEASE=6.1.0-planted\n" + (buildId is null ? "" : $"BUILD-ID={buildId}\n")
            + "PAGESIZE=4096\nKERNELOFFSET=1000000\nSYMBOL(init_top_pgt)=ffffffff8260a000\nNUMBER(phys_base)=0\n";
        var page = new byte[GuestMemory.PageSize];
        System.Text.Encoding.ASCII.GetBytes(text).CopyTo(page, 0);
        return page;
    }

    [Fact]
    public async Task A_VMCOREINFO_planted_in_RAM_is_passed_over_and_without_the_real_one_nothing_is_trusted()
    {
        var folder = Directory.CreateTempSubdirectory("semigrate-planted-").FullName;
        try
        {
            // Planted in the first pages, before the kernel's own: one with another build id, one with none.
            var image = RawImage(folder, raw =>
            {
                raw.WritePage(16, PlantedVmcoreInfo("00112233445566778899aabbccddeeff00112233"));
                raw.WritePage(17, PlantedVmcoreInfo(null));
            });
            using (var guest = await Introspected.WithinAsync(Bound, image, Layout))
            {
                Assert.NotNull(guest.Result.Symbols);
                Assert.StartsWith("RAM scan at 0x", guest.Result.Symbols!.VmcoreInfoSource, StringComparison.Ordinal);
                Assert.NotEqual("RAM scan at 0x10000", guest.Result.Symbols.VmcoreInfoSource);
                Assert.Equal(Layout.BuildId, guest.Result.Symbols.BuildId, ignoreCase: true);
                Assert.True(guest.Classify("vaultdb").Plain > 0, "the real VMCOREINFO was used: the walks worked");
            }

            // The kernel's own text gone (every OSRELEASE= beyond the planted ones overwritten): nothing is trusted.
            image = RawImage(folder, raw =>
            {
                raw.WritePage(16, PlantedVmcoreInfo("00112233445566778899aabbccddeeff00112233"));
                raw.WritePage(17, PlantedVmcoreInfo(null));
                for (var pfn = 18UL; pfn < raw.PfnLimit; pfn++)
                {
                    var page = raw.Page(pfn).ToArray();
                    var at = page.AsSpan().IndexOf("OSRELEASE="u8);
                    if (at >= 0)
                    {
                        page[at] = (byte)'X';
                        raw.WritePage(pfn, page);
                    }
                }
            });
            using (var guest = await Introspected.WithinAsync(Bound, image, Layout))
            {
                Assert.Null(guest.Result.Symbols);
                Assert.Contains($"no VMCOREINFO found with the kernel's build id {Layout.BuildId}", Assert.Single(guest.Result.Diagnostics), StringComparison.Ordinal);
                Assert.Contains("(2 with another or none: planted", guest.Result.Diagnostics[0], StringComparison.Ordinal);
                var map = guest.Classify("vaultdb", "webapp");
                Assert.Equal(map.GuestPages, map.Sealed);
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The physical address of the first present 4 KiB page-table entry of <paramref name="comm"/>'s user half.</summary>
    private static ulong FirstLeafEntry(Introspected good, AddressSpace space, string comm)
    {
        var task = good.Result.Tasks.Single(t => t.Comm == comm);
        Assert.True(space.TryReadUInt64(task.Mm + (ulong)good.Layout.MmPgd, out var pgd));
        Assert.True(space.TryTranslate(pgd, out var table));
        const ulong mask = 0x000f_ffff_ffff_f000;
        ulong? Descend(ulong at, int level)
        {
            for (var i = 0; i < (level == 4 ? 256 : 512); i++)
            {
                var entryAt = (at & mask) + (ulong)i * 8;
                if (!good.Memory.TryReadUInt64(entryAt, out var entry) || (entry & 1) == 0 || (level is 2 or 3 && (entry & (1 << 7)) != 0))
                {
                    continue;
                }
                if (level == 1)
                {
                    return entryAt;
                }
                if (Descend(entry, level - 1) is { } found)
                {
                    return found;
                }
            }
            return null;
        }
        return Descend(table, 4) ?? throw new InvalidOperationException($"{comm} maps no 4 KiB page");
    }

    [Fact]
    public async Task A_PROT_NONE_page_is_still_the_processs_own()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        ulong pfn;
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var at = FirstLeafEntry(good, space, "webapp");
            Assert.True(good.Memory.TryReadUInt64(at, out var entry));
            pfn = (entry & 0x000f_ffff_ffff_f000) >> 12;
            Assert.Contains(pfn, good.Process("webapp").Pfns);
            copy.WriteUInt64(at, (entry & ~1UL) | (1UL << 8)); // as mprotect(PROT_NONE) or NUMA hinting leaves it
        }

        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        Assert.Contains(pfn, guest.Process("webapp").Pfns);
        Assert.Equal(PageClass.Sealed, guest.Classify("vaultdb")[pfn]); // never free, never plain
    }

    [Fact]
    public async Task Tasks_that_share_an_mm_each_map_its_pages()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var (vault, web) = (good.Result.Tasks.Single(t => t.Comm == "vaultdb"), good.Result.Tasks.Single(t => t.Comm == "webapp"));
            Assert.True(space.TryTranslate(web.Address + (ulong)Layout.TaskMm, out var pa));
            copy.WriteUInt64(pa, vault.Mm); // webapp now shares vaultdb's address space (as CLONE_VM would)
        }

        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        Assert.Equal(guest.Process("vaultdb").Pfns, guest.Process("webapp").Pfns);
        // Mapped by a process that is not plain as well: nothing of vaultdb's travels as-is.
        Assert.Equal(0UL, guest.Classify("vaultdb").Plain);
    }

    [Fact]
    public async Task A_leader_that_exited_is_walked_through_a_thread_that_runs_on()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        ulong[] vaultPages;
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var (vault, web) = (good.Result.Tasks.Single(t => t.Comm == "vaultdb"), good.Result.Tasks.Single(t => t.Comm == "webapp"));
            vaultPages = good.Process("vaultdb").Pfns;
            void Write(ulong va, ulong value)
            {
                Assert.True(space.TryTranslate(va, out var pa));
                copy.WriteUInt64(pa, value);
            }
            // webapp's leader has exited (no mm); its thread group's list holds one live thread, which
            // maps what vaultdb maps (vaultdb's task plays that thread).
            Assert.True(space.TryReadUInt64(web.Address + (ulong)Layout.TaskSignal, out var signal));
            var head = signal + (ulong)Layout.SignalThreadHead;
            var thread = vault.Address + (ulong)Layout.TaskThreadNode;
            Write(head + (ulong)Layout.ListNext, thread);
            Write(head + (ulong)Layout.ListPrev, thread);
            Write(thread + (ulong)Layout.ListNext, head);
            Write(thread + (ulong)Layout.ListPrev, head);
            Write(web.Address + (ulong)Layout.TaskMm, 0);
        }

        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        Assert.Equal(vaultPages, guest.Process("webapp").Pfns);
        Assert.Equal(0UL, guest.Classify("vaultdb").Plain); // its pages are mapped by webapp's thread too
    }

    [Theory]
    [InlineData("token bomb")]
    [InlineData("name bomb")]
    public async Task A_kallsyms_bomb_is_refused_at_the_kernels_own_name_limit_at_once_and_nothing_is_plain(string bomb)
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var memory = GuestMemory.OpenElfDump(fixture.Guest.DumpPath))
        {
            var (_, space) = KernelSymbols.Resolve(memory, Layout);
            var info = VmcoreInfo.Find(memory, Layout.BuildId);
            ulong At(string symbol) => space.TryTranslate(info.Symbol(symbol), out var pa) ? pa : throw new InvalidOperationException($"{symbol} is not mapped");
            // The first name claims the most tokens a length can say (two-byte length 32,767), all token 0.
            var name = new byte[2 + 32_767];
            (name[0], name[1]) = (0xff, 0xff);
            if (bomb == "token bomb")
            {
                // ... and token 0 runs ~64 KiB: token_index says the table is that long, and no NUL ends it.
                var index = new byte[512];
                BinaryPrimitives.WriteUInt16LittleEndian(index.AsSpan(255 * 2), 0xfe00);
                copy.Write(At("kallsyms_token_index"), index);
                copy.Write(At("kallsyms_token_table"), Enumerable.Repeat((byte)'A', 0xfe00).ToArray());
            }
            else
            {
                name.AsSpan(2).Fill((byte)'a'); // the kernel's own token 'a' stands for: at least a letter, 32,767 times
            }
            copy.Write(At("kallsyms_names"), name);
        }

        var clock = Stopwatch.StartNew();
        using var guest = await Introspected.WithinAsync(Bound, copy.Path, Layout);
        TestContext.Current.TestOutputHelper?.WriteLine($"kallsyms {bomb}: refused in {clock.Elapsed.TotalMilliseconds:0} ms: {guest.Result.Diagnostics.FirstOrDefault()}");
        Assert.Null(guest.Result.Symbols);
        Assert.Contains(guest.Result.Diagnostics, d => d.Contains($"longer than a symbol name may be ({Kallsyms.KsymNameLen} bytes)", StringComparison.Ordinal));
        Assert.Equal(0UL, guest.Classify("vaultdb", "webapp").Plain);
    }

    [Fact]
    public async Task A_spent_budget_stops_every_walk_and_nothing_is_plain_and_a_cancel_stops_it_at_once()
    {
        using var memory = GuestMemory.OpenElfDump(fixture.Guest.DumpPath);
        var result = await Task.Run(() => GuestIntrospection.Run(memory, Layout, budget: new Walks.WalkBudget(steps: 1_000, TimeSpan.FromMinutes(1))))
            .WaitAsync(Bound);
        Assert.Contains(result.Diagnostics, d => d.Contains("introspection budget spent: more than 1000 ", StringComparison.Ordinal));
        Assert.Equal(0UL, Classification.Classifier.Classify(memory, result, new HashSet<string> { "vaultdb", "webapp" }).Plain);

        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        Assert.Throws<OperationCanceledException>(() => GuestIntrospection.Run(memory, Layout, cancelled.Token));
    }

    [Fact]
    public async Task Memory_that_is_not_a_Linux_guest_is_all_sealed()
    {
        var dir = Directory.CreateTempSubdirectory("semigrate-noise-").FullName;
        var image = Path.Combine(dir, "noise.img");
        var noise = new byte[16 << 20];
        new Random(7).NextBytes(noise);
        await File.WriteAllBytesAsync(image, noise, TestContext.Current.CancellationToken);
        using (var guest = await Introspected.WithinAsync(Bound, image, Layout))
        {
            Assert.Contains("no VMCOREINFO found", Assert.Single(guest.Result.Diagnostics), StringComparison.Ordinal);
            Assert.Equal(4096UL, guest.Classify("vaultdb").Sealed);
        }
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>The standard (non-cloud) flavour of the same kernel release: another build.</summary>
    private static async Task<string> OtherKernelAsync()
    {
        var script = Path.Combine(AppContext.BaseDirectory, "deploy", "guest", "guest-kit.sh");
        using var kit = Process.Start(new ProcessStartInfo("bash", [script, "--kernel", "amd64"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        var stdout = await kit.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = await kit.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        await kit.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.True(kit.ExitCode == 0, stderr);
        return stdout.Trim();
    }
}
