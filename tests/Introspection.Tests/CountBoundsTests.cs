using System.Buffers.Binary;
using System.Diagnostics;
using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Classification;
using SEmigrate.Introspection.Kernel;
using SEmigrate.Introspection.Walks;
using SEmigrate.TestSupport;

namespace SEmigrate.Introspection.Tests;

/// <summary>Every count a hostile guest (or a forged kernel profile) controls, forged far beyond the kernel's
/// own limit: each must be refused before anything is sized, looped or indexed by it, with a diagnostic that
/// names it, what it covers sealed, no exception but the documented one, and memory that stays small.</summary>
public sealed class CountBoundsTests(RealGuestFixture fixture)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    /// <summary>A whole introspection and classification of the test guest allocates ~20 MiB: a walk sized by
    /// a forged count (a GiB of kallsyms offsets, 2^31 zones) would allocate far more.</summary>
    private const long MaxAllocated = 128L << 20;

    private KernelLayout Layout => KernelLayout.Load(fixture.Guest.KernelPath);

    private sealed record Outcome(GuestIntrospection Result, ClassificationMap Map, long Allocated, TimeSpan Took)
    {
        public bool AllSealed => Map.Sealed == Map.GuestPages;
    }

    /// <summary>Introspects and classifies <paramref name="image"/> on one thread, counting what that thread allocates.</summary>
    private static async Task<Outcome> IntrospectAsync(string image, KernelLayout layout, params string[] plain) =>
        await Task.Run(() =>
        {
            var allocated = GC.GetAllocatedBytesForCurrentThread();
            var clock = Stopwatch.StartNew();
            using var memory = GuestMemory.Open(image);
            var result = GuestIntrospection.Run(memory, layout);
            var map = Classifier.Classify(memory, result, plain.ToHashSet());
            var outcome = new Outcome(result, map, GC.GetAllocatedBytesForCurrentThread() - allocated, clock.Elapsed);
            TestContext.Current.TestOutputHelper?.WriteLine(
                $"{outcome.Took.TotalMilliseconds:0} ms, {outcome.Allocated >> 20} MiB allocated, {result.Diagnostics.Count} diagnostics: {result.Diagnostics.FirstOrDefault()}");
            return outcome;
        }).WaitAsync(Bound);

    private static void AssertBounded(Outcome o, string diagnostic)
    {
        Assert.InRange(o.Allocated, 0, MaxAllocated);
        Assert.Contains(o.Result.Diagnostics, d => d.Contains(diagnostic, StringComparison.Ordinal));
        Assert.InRange(o.Result.Diagnostics.Count, 1, GuestIntrospection.MaxDiagnostics + 1);
        Assert.Equal(0UL, o.Map.Plain);
    }

    [Theory]
    [InlineData("LENGTH(node_data)", "2147483648", "LENGTH(node_data) is 2147483648")]
    [InlineData("LENGTH(node_data)", "9223372036854775807", "LENGTH(node_data) is 9223372036854775807")]
    [InlineData("LENGTH(node_data)", "-1", "LENGTH(node_data) is -1")]
    [InlineData("LENGTH(node_data)", "1025", "LENGTH(node_data) is 1025")]
    [InlineData("LENGTH(node_data)", "18446744073709551616", "VMCOREINFO holds a malformed value")] // beyond a long
    [InlineData("NUMBER(KERNEL_IMAGE_SIZE)", "9223372036854775807", "KERNEL_IMAGE_SIZE is 9223372036854775807")]
    [InlineData("NUMBER(KERNEL_IMAGE_SIZE)", "-1", "KERNEL_IMAGE_SIZE is -1")]
    [InlineData("NUMBER(KERNEL_IMAGE_SIZE)", "1073745920", "KERNEL_IMAGE_SIZE is 1073745920")] // 1 GiB and a page
    public async Task A_VMCOREINFO_count_beyond_the_kernels_limit_is_refused_and_everything_sealed(string key, string value, string diagnostic)
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        copy.ForgeVmcoreInfo(key, value);
        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        AssertBounded(o, diagnostic);
        Assert.Null(o.Result.Symbols);
        Assert.True(o.AllSealed);
    }

    [Theory]
    [InlineData(0x7fff_ffffu)]
    [InlineData(0x8000_0000u)] // negative as the int it is
    [InlineData(0x1000_0000u)] // would size a 1 GiB read of kallsyms_offsets
    [InlineData((uint)Kallsyms.MaxSymbols + 1)]
    [InlineData(0u)]
    public async Task A_kallsyms_num_syms_beyond_any_kernels_is_refused_before_anything_is_sized_by_it(uint forged)
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var memory = GuestMemory.OpenElfDump(fixture.Guest.DumpPath))
        {
            var (_, space) = KernelSymbols.Resolve(memory, Layout);
            Assert.True(space.TryTranslate(VmcoreInfo.Find(memory, Layout.BuildId).Symbol("kallsyms_num_syms"), out var pa));
            var count = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(count, forged);
            copy.Write(pa, count);
        }
        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        AssertBounded(o, $"kallsyms_num_syms is {(int)forged}: not a plausible symbol count");
        Assert.True(o.AllSealed);
    }

    [Theory]
    [InlineData(nameof(KernelLayout.MaxNrZones), int.MaxValue)]
    [InlineData(nameof(KernelLayout.MaxNrZones), -1)]
    [InlineData(nameof(KernelLayout.MaxOrder), int.MaxValue)]
    [InlineData(nameof(KernelLayout.MigrateTypes), int.MaxValue)]
    [InlineData(nameof(KernelLayout.TaskCommSize), 1 << 30)] // read onto the stack: would end the process
    [InlineData(nameof(KernelLayout.PageStructSize), 0)] // divides
    [InlineData(nameof(KernelLayout.ZoneSize), int.MaxValue)]
    [InlineData(nameof(KernelLayout.FreeAreaSize), -1)]
    public async Task A_profile_count_beyond_the_kernels_limit_is_refused_and_everything_sealed(string field, int value)
    {
        var layout = Layout;
        var forged = field switch
        {
            nameof(KernelLayout.MaxNrZones) => layout with { MaxNrZones = value },
            nameof(KernelLayout.MaxOrder) => layout with { MaxOrder = value },
            nameof(KernelLayout.MigrateTypes) => layout with { MigrateTypes = value },
            nameof(KernelLayout.TaskCommSize) => layout with { TaskCommSize = value },
            nameof(KernelLayout.PageStructSize) => layout with { PageStructSize = value },
            nameof(KernelLayout.ZoneSize) => layout with { ZoneSize = value },
            nameof(KernelLayout.FreeAreaSize) => layout with { FreeAreaSize = value },
            _ => throw new ArgumentOutOfRangeException(nameof(field)),
        };
        var o = await IntrospectAsync(fixture.Guest.DumpPath, forged, "vaultdb", "webapp");
        AssertBounded(o, $"kernel profile: {field} is {value}");
        Assert.True(o.AllSealed);
    }

    [Theory]
    [InlineData(0x7fff_ffffu)]
    [InlineData(0x8000_0000u)]
    [InlineData(0xffff_ffffu)]
    public async Task A_VMCOREINFO_note_longer_than_its_segment_is_passed_over_for_the_copy_in_RAM(uint descriptorSize)
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        var (at, _) = copy.VmcoreInfoNote();
        var size = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(size, descriptorSize);
        copy.WriteAt(at - 20, size); // namesz, descsz, type, "VMCOREINFO\0" padded to 12, then the text
        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb");
        Assert.InRange(o.Allocated, 0, MaxAllocated);
        // The RAM copy counts only with the kernel file's build id: the walks work, as from the note.
        Assert.StartsWith("RAM scan at 0x", o.Result.Symbols!.VmcoreInfoSource, StringComparison.Ordinal);
        Assert.Equal(Layout.BuildId, o.Result.Symbols.BuildId, ignoreCase: true);
        Assert.Empty(o.Result.Diagnostics);
    }

    /// <summary>The physical address of a run of free guest pages at least <paramref name="bytes"/> long: the guest's to write.</summary>
    private static ulong FreeRun(Introspected good, long bytes)
    {
        var need = (ulong)((bytes + GuestMemory.PageSize - 1) / GuestMemory.PageSize);
        var run = 0UL;
        for (var pfn = 0UL; pfn < good.Memory.PfnLimit; pfn++)
        {
            run = good.IsFree(pfn) && good.Memory.IsPresent(pfn) ? run + 1 : 0;
            if (run == need)
            {
                return (pfn + 1 - need) << GuestMemory.PageShift;
            }
        }
        throw new InvalidOperationException($"no {need} free pages in a row");
    }

    /// <summary>Forges <paramref name="count"/> task_structs at <paramref name="at"/> (physical), packed as tightly as
    /// the fields a walk reads allow (a hostile kernel need not keep them apart), with the mm <paramref name="mm"/>
    /// gives each, and links them into the task list after vaultdb: a list the walk can follow to its end.</summary>
    private static void ForgeTasks(DumpCopy copy, Introspected good, AddressSpace space, ulong at, int count, Func<int, ulong> mm)
    {
        var l = good.Layout;
        (int Offset, int Length)[] fields = [(l.TaskTasks, 16), (l.TaskPid, 4), (l.TaskMm, 8), (l.TaskComm, l.TaskCommSize)];
        var stride = Enumerable.Range(2, 512).Select(i => i * 8).First(s =>
        {
            var taken = new bool[s];
            return fields.All(f => Enumerable.Range(f.Offset, f.Length).All(b => !taken[b % s] && (taken[b % s] = true)));
        });
        var first = fields.Min(f => f.Offset);
        var bytes = new byte[(long)count * stride + fields.Max(f => f.Offset + f.Length) - first];
        var region = good.Result.Symbols!.PageOffsetBase + at;
        ulong List(int k) => region - (ulong)first + (ulong)k * (ulong)stride + (ulong)l.TaskTasks;

        var vault = good.Result.Tasks.Single(t => t.Comm == "vaultdb").Address + (ulong)l.TaskTasks;
        Assert.True(space.TryReadUInt64(vault + (ulong)l.ListNext, out var after));
        for (var k = 0; k < count; k++)
        {
            Span<byte> Field(int offset) => bytes.AsSpan(k * stride - first + offset); // task k starts before the region's first byte
            BinaryPrimitives.WriteUInt64LittleEndian(Field(l.TaskTasks + l.ListNext), k + 1 < count ? List(k + 1) : after);
            BinaryPrimitives.WriteUInt64LittleEndian(Field(l.TaskTasks + l.ListPrev), k > 0 ? List(k - 1) : vault);
            BinaryPrimitives.WriteInt32LittleEndian(Field(l.TaskPid), 100_000 + k);
            BinaryPrimitives.WriteUInt64LittleEndian(Field(l.TaskMm), mm(k));
            "forged\0"u8.CopyTo(Field(l.TaskComm));
        }
        copy.Write(at, bytes);
        Assert.True(space.TryTranslate(vault + (ulong)l.ListNext, out var vaultNext));
        copy.WriteUInt64(vaultNext, List(0));
        Assert.True(space.TryTranslate(after + (ulong)l.ListPrev, out var afterPrev));
        copy.WriteUInt64(afterPrev, List(count - 1));
    }

    [Fact]
    public async Task A_task_list_longer_than_the_guest_has_kernel_stacks_for_ends_the_walk_and_nothing_is_plain()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        int max;
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            max = (int)(good.Memory.GuestPages / TaskWalk.PagesPerTask);
            // One more than the bound, each with an mm of its own that is not in guest memory: a diagnostic each.
            ForgeTasks(copy, good, space, FreeRun(good, 4L << 20), max + 1, k => 0xffff_c900_0000_0000 + ((ulong)k << 12));
        }

        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        AssertBounded(o, $"task list: more than {max} tasks: not a plausible list");
        Assert.False(o.Result.TaskListComplete);
        Assert.Equal(max, o.Result.Tasks.Count);
        Assert.Matches("^and [0-9]+ more diagnostics$", o.Result.Diagnostics[^1]); // one a forged mm: thousands
        Assert.True(o.Map.Zero > 0, "free memory is still known");
    }

    [Fact]
    public async Task Thousands_of_tasks_on_one_mm_that_maps_all_memory_cost_its_pages_once()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        int forged;
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (symbols, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var at = FreeRun(good, 4L << 20);
            // An mm_struct, and its page tables mapping all the guest's RAM with 2 MiB pages.
            var (mm, pgd, pud, pmd) = (at, at + 0x1000, at + 0x2000, at + 0x3000);
            copy.Write(at, new byte[0x4000]); // free pages hold what they last held
            copy.WriteUInt64(mm + (ulong)Layout.MmPgd, symbols.PageOffsetBase + pgd);
            copy.WriteUInt64(pgd, pud | 1);
            copy.WriteUInt64(pud, pmd | 1);
            var ram = good.Memory.Ranges.Max(r => r.Pages);
            for (var i = 0UL; i < ram / 512; i++)
            {
                copy.WriteUInt64(pmd + i * 8, (i << 21) | 0x81); // present, 2 MiB
            }
            forged = (int)(good.Memory.GuestPages / TaskWalk.PagesPerTask) - good.Result.Tasks.Count - 1;
            ForgeTasks(copy, good, space, at + 0x4000, forged, _ => symbols.PageOffsetBase + mm);
        }

        var clean = await IntrospectAsync(fixture.Guest.DumpPath, Layout, "vaultdb", "webapp");
        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        Assert.True(o.Result.TaskListComplete, string.Join("; ", o.Result.Diagnostics));
        var shared = o.Result.Processes.Where(p => p.Task.Comm == "forged").ToList();
        Assert.Equal(forged, shared.Count);
        Assert.True(shared[0].Pfns.Length > 60_000, $"{shared[0].Pfns.Length} pages");
        // Were each task's pages gone through, forged x pages would be ~10^9 steps: 50 times a clean run here.
        Assert.True(o.Took < clean.Took * 5 + TimeSpan.FromSeconds(1), $"{o.Took.TotalSeconds:0.0} s, a clean run {clean.Took.TotalSeconds:0.0} s");
        Assert.InRange(o.Allocated, 0, MaxAllocated);
        Assert.Equal(0UL, o.Map.Plain); // all memory is mapped by "forged", which is not plain
        Assert.Equal(0UL, o.Map.Zero);
    }

    [Fact]
    public async Task An_exited_leaders_thread_list_that_cycles_ends_at_the_thread_bound_and_nothing_is_plain()
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        int pid;
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (symbols, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var web = good.Result.Tasks.Single(t => t.Comm == "webapp");
            pid = web.Pid;
            void Write(ulong va, ulong value)
            {
                Assert.True(space.TryTranslate(va, out var pa));
                copy.WriteUInt64(pa, value);
            }
            // webapp's leader has exited; its thread list leads to a thread without an mm (init_task's
            // node plays it) that links to itself.
            Assert.True(space.TryReadUInt64(web.Address + (ulong)Layout.TaskSignal, out var signal));
            var node = symbols.InitTask + (ulong)Layout.TaskThreadNode;
            Write(signal + (ulong)Layout.SignalThreadHead + (ulong)Layout.ListNext, node);
            Write(node + (ulong)Layout.ListNext, node);
            Write(web.Address + (ulong)Layout.TaskMm, 0);
        }

        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        AssertBounded(o, $"task list: pid {pid}'s threads: more than {TaskWalk.MaxThreads} threads");
        Assert.False(o.Result.TaskListComplete);
    }

    [Theory]
    [InlineData("a 1 GiB leaf", "page tables map more pages than the guest has: forged")]
    [InlineData("a table reached twice", "is reached twice: forged")]
    public async Task A_process_page_table_is_walked_no_further_than_the_guest_has_pages(string forgery, string diagnostic)
    {
        using var copy = new DumpCopy(fixture.Guest.DumpPath);
        using (var good = new Introspected(fixture.Guest.DumpPath, Layout))
        {
            var (_, space) = KernelSymbols.Resolve(good.Memory, Layout);
            var vault = good.Result.Tasks.Single(t => t.Comm == "vaultdb");
            Assert.True(space.TryReadUInt64(vault.Mm + (ulong)Layout.MmPgd, out var pgdVa));
            Assert.True(space.TryTranslate(pgdVa, out var pgd));
            var entries = Enumerable.Range(0, 256).Select(i => good.Memory.TryReadUInt64(pgd + (ulong)i * 8, out var e) ? e : 0).ToArray();
            var empty = (ulong)Array.FindIndex(entries, 1, e => (e & 1) == 0);
            if (forgery == "a 1 GiB leaf")
            {
                var pud = FreeRun(good, GuestMemory.PageSize);
                copy.Write(pud, new byte[GuestMemory.PageSize]);
                copy.WriteUInt64(pud, 0x81); // present, 1 GiB, from page 0: 262,144 pages
                copy.WriteUInt64(pgd + empty * 8, pud | 1);
            }
            else
            {
                copy.WriteUInt64(pgd + empty * 8, entries.First(e => (e & 1) != 0));
            }
        }

        var o = await IntrospectAsync(copy.Path, Layout, "vaultdb", "webapp");
        AssertBounded(o, diagnostic);
        Assert.True(o.Result.TaskListComplete);
        Assert.NotNull(o.Result.Processes.Single(p => p.Task.Comm == "vaultdb").Problem);
    }

    /// <summary>A BTF blob: header, then the type section, then the string section ("\0s\0m\0").</summary>
    private static byte[] BtfBlob(byte[] types, uint? typeLength = null, uint? stringLength = null, uint headerLength = 24, uint stringOffset = 0)
    {
        var strings = "\0s\0m\0"u8.ToArray();
        var data = new byte[24 + types.Length + strings.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(data, 0xeB9F);
        data[2] = 1; // version
        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(4), headerLength);
        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(12), typeLength ?? (uint)types.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(16), stringOffset == 0 ? (uint)types.Length : stringOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(20), stringLength ?? (uint)strings.Length);
        types.CopyTo(data, 24);
        strings.CopyTo(data, 24 + types.Length);
        return data;
    }

    /// <summary>One BTF type: name offset, kind and vlen, size or type; then <paramref name="follows"/>.</summary>
    private static byte[] BtfType(uint name, int kind, int vlen, uint sizeOrType, params uint[] follows)
    {
        var t = new byte[12 + 4 * follows.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(t, name);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), ((uint)kind << 24) | (uint)vlen);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(8), sizeOrType);
        for (var i = 0; i < follows.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(12 + 4 * i), follows[i]);
        }
        return t;
    }

    [Theory]
    [InlineData("type_len", "BTF sections lie outside the data")]
    [InlineData("str_len", "BTF sections lie outside the data")]
    [InlineData("hdr_len", "BTF sections lie outside the data")]
    [InlineData("str_off", "BTF sections lie outside the data")]
    [InlineData("struct vlen", "runs past the type section")]
    [InlineData("enum vlen", "runs past the type section")]
    [InlineData("array cut short", "runs past the type section")]
    [InlineData("array of 2^32 - 1 structs of 4 GiB", "larger than 2 GiB")]
    public void A_BTF_length_beyond_its_data_is_refused(string forged, string message)
    {
        // Type 1: struct s (4 bytes) with one member m of type 2, an int.
        var sane = BtfType(1, 4, 1, 4, 3, 2, 0).Concat(BtfType(0, 1, 0, 4, 32)).ToArray();
        var allocated = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<InvalidDataException>(() =>
        {
            var btf = new Btf(forged switch
            {
                "type_len" => BtfBlob(sane, typeLength: 0xffff_ffff),
                "str_len" => BtfBlob(sane, stringLength: 0xffff_ffff),
                "hdr_len" => BtfBlob(sane, headerLength: 0xffff_ffff),
                "str_off" => BtfBlob(sane, stringOffset: 0xffff_fff0),
                "struct vlen" => BtfBlob(BtfType(1, 4, 0xffff, 4, 3, 2, 0)), // claims 65,535 members, holds one
                "enum vlen" => BtfBlob(BtfType(1, 6, 0xffff, 4, 3, 7)),
                "array cut short" => BtfBlob(BtfType(0, 3, 0, 0, 2, 2)),
                _ => BtfBlob([.. BtfType(1, 4, 1, 4, 3, 2, 0), .. BtfType(0, 3, 0, 0, 3, 3, 0xffff_ffff), .. BtfType(0, 4, 0, 0xffff_ffff)]),
            });
            btf.MemberSize("s", "m");
        });
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - allocated, 0, 1 << 20);
    }
}
