using SEmigrate.Contracts;
using SEmigrate.Introspection.Kernel;
using SEmigrate.TestSupport;

namespace SEmigrate.Introspection.Tests;

/// <summary>Introspection of a real Linux kernel's memory (QEMU dump), checked against what the guest
/// said about itself from inside (/proc/PID/pagemap, /proc/zoneinfo).</summary>
public sealed class RealGuestTests(RealGuestFixture fixture) : IDisposable
{
    private readonly Introspected guest = new(fixture.Guest.DumpPath, KernelLayout.Load(fixture.Guest.KernelPath));

    public void Dispose() => guest.Dispose();

    [Fact]
    public void Reads_the_kernel_and_its_task_list_without_complaint()
    {
        Assert.Empty(guest.Result.Diagnostics);
        var symbols = guest.Result.Symbols!;
        Assert.Equal(fixture.Guest.GroundTruth.Release, symbols.Release);
        Assert.Equal("ELF note", symbols.VmcoreInfoSource);
        Assert.True(symbols.KallsymsCount > 50_000, $"{symbols.KallsymsCount} kallsyms");
        Assert.True(guest.Result.TaskListComplete);
        Assert.Equal((0, "swapper/0"), (guest.Result.Tasks[0].Pid, guest.Result.Tasks[0].Comm));
        Assert.Contains(guest.Result.Tasks, t => t.Pid == 1 && t.Comm == "init");
        foreach (var p in fixture.Guest.GroundTruth.Processes)
        {
            Assert.Contains(guest.Result.Tasks, t => t.Pid == p.Pid && t.Comm == p.Comm);
        }
    }

    [Fact]
    public void Free_pages_per_zone_equal_NR_FREE_PAGES_and_the_guests_own_count()
    {
        var withPages = guest.Result.Zones.Where(z => z.NrFreePages > 0).ToList();
        Assert.Contains(withPages, z => z.Name == "DMA32");
        Assert.All(guest.Result.Zones, z => Assert.True(z.Trusted, $"zone {z.Name}: {z.FreePagesWalked} vs {z.NrFreePages} {z.Problem}"));
        Assert.All(guest.Result.Zones, z => Assert.Equal(z.NrFreePages, (long)z.FreePagesWalked));
        // The guest kept running for a moment after printing /proc/zoneinfo: allow a little drift.
        foreach (var truth in fixture.Guest.GroundTruth.Zones.Where(z => z.FreePages > 0))
        {
            var zone = guest.Result.Zones.Single(z => z.Name == truth.Name);
            Assert.InRange((long)zone.FreePagesWalked, (long)truth.FreePages - 512, (long)truth.FreePages + 512);
        }
        var freeBits = guest.Result.FreeBitmap.Sum(w => (long)System.Numerics.BitOperations.PopCount(w));
        Assert.Equal(guest.Result.Zones.Sum(z => z.NrFreePages), freeBits);
    }

    [Fact]
    public void Each_named_process_maps_exactly_the_pages_its_pagemap_lists()
    {
        foreach (var truth in fixture.Guest.GroundTruth.Processes)
        {
            var walked = guest.Result.Processes.Single(p => p.Task.Pid == truth.Pid);
            Assert.Null(walked.Problem);
            Assert.Equal(truth.Pfns, walked.Pfns);
        }
        Assert.True(guest.Process("vaultdb").Pfns.Length >= 16 * 256, "vaultdb fills 16 MiB");
    }

    [Fact]
    public void Free_and_process_pages_do_not_overlap()
    {
        foreach (var p in guest.Result.Processes)
        {
            Assert.DoesNotContain(p.Pfns, guest.IsFree);
        }
    }

    [Fact]
    public void Pages_only_plain_listed_processes_map_are_plain_and_shared_ones_sealed()
    {
        var map = guest.Classify("vaultdb", "webapp");
        var listed = guest.Result.Processes.Where(p => p.Task.Comm is "vaultdb" or "webapp").SelectMany(p => p.Pfns).ToHashSet();
        var others = guest.Result.Processes.Where(p => p.Task.Comm is not ("vaultdb" or "webapp")).SelectMany(p => p.Pfns).ToHashSet();
        var onlyListed = listed.Except(others).ToList();
        var shared = listed.Intersect(others).ToList();
        Assert.All(onlyListed, pfn => Assert.Equal(PageClass.Plain, map[pfn]));
        Assert.All(shared, pfn => Assert.Equal(PageClass.Sealed, map[pfn]));
        Assert.Equal((ulong)onlyListed.Count, map.Plain);
        Assert.True(map.Plain >= 24 * 256, $"{map.Plain} plain pages for 24 MiB of markers");
    }

    [Fact]
    public void Program_text_shared_with_a_process_not_on_the_list_stays_sealed()
    {
        // vaultdb and webapp run the same binary: listing only vaultdb leaves the text they share sealed.
        var map = guest.Classify("vaultdb");
        var vault = guest.Process("vaultdb").Pfns;
        var shared = vault.Intersect(guest.Process("webapp").Pfns).ToList();
        Assert.NotEmpty(shared);
        Assert.All(shared, pfn => Assert.Equal(PageClass.Sealed, map[pfn]));
        Assert.All(vault.Except(guest.Result.Processes.Where(p => p.Task.Comm != "vaultdb").SelectMany(p => p.Pfns)),
            pfn => Assert.Equal(PageClass.Plain, map[pfn]));
    }

    [Fact]
    public void Free_pages_are_zero_class_even_those_holding_stale_secrets()
    {
        var map = guest.Classify("vaultdb", "webapp");
        var stale = "STALEMARK"u8.ToArray();
        var staleFree = 0;
        for (var pfn = 0UL; pfn < guest.Memory.PfnLimit; pfn++)
        {
            if (!guest.Memory.IsPresent(pfn))
            {
                continue;
            }
            if (guest.IsFree(pfn))
            {
                Assert.Equal(PageClass.Zero, map[pfn]);
                if (guest.Memory.Page(pfn).IndexOf(stale) >= 0)
                {
                    staleFree++;
                }
            }
        }
        // scratch freed 24 MiB (6144 pages) of STALEMARK; most of it is still free and still holds it.
        Assert.True(staleFree >= 3000, $"only {staleFree} free pages hold the stale marker");
    }

    [Fact]
    public void Classes_add_up_to_the_guests_pages()
    {
        var map = guest.Classify("vaultdb");
        Assert.Equal(guest.Memory.GuestPages, map.Zero + map.Plain + map.Sealed);
        Assert.Equal(guest.Memory.GuestPages, map.GuestPages);
        Assert.True(map.Zero > 0 && map.Plain > 0 && map.Sealed > 0);
    }

    [Fact]
    public void A_raw_image_without_the_ELF_note_is_read_the_same_through_a_RAM_scan()
    {
        var dir = Directory.CreateTempSubdirectory("semigrate-raw-").FullName;
        var raw = Path.Combine(dir, "memory.img");
        using (var output = new FileStream(raw, FileMode.CreateNew))
        {
            output.SetLength((long)guest.Memory.PfnLimit << 12);
            foreach (var range in guest.Memory.Ranges)
            {
                output.Position = (long)range.FirstPfn << 12;
                for (var pfn = range.FirstPfn; pfn < range.EndPfn; pfn++)
                {
                    output.Write(guest.Memory.Page(pfn));
                }
            }
        }
        using (var image = new Introspected(raw, guest.Layout))
        {
            Assert.Empty(image.Result.Diagnostics);
            Assert.StartsWith("RAM scan at 0x", image.Result.Symbols!.VmcoreInfoSource, StringComparison.Ordinal);
            Assert.Equal(guest.Result.Zones, image.Result.Zones);
            Assert.Equal(guest.Process("vaultdb").Pfns, image.Process("vaultdb").Pfns);
            Assert.Equal(guest.Classify("vaultdb").Plain, image.Classify("vaultdb").Plain);
        }
        Directory.Delete(dir, recursive: true);
    }
}
