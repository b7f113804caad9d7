using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Walks;

/// <summary>Free pages from the buddy allocator: every node, zone, order and migratetype free list,
/// each head page checked (PG_buddy, order in page.private, inside vmemmap), each list bounded and
/// cycle-checked, and each zone's total cross-checked against its NR_FREE_PAGES. Only zones that pass
/// contribute free pages: a zone that fails keeps its pages sealed.</summary>
public static class BuddyWalk
{
    public sealed record Zone(int Node, string Name, ulong FreePagesWalked, long NrFreePages, string? Problem)
    {
        public bool Trusted => Problem is null && (long)FreePagesWalked == NrFreePages;
    }

    public sealed record Result(IReadOnlyList<Zone> Zones, ulong[] FreeBitmap, IReadOnlyList<string> Problems);

    public static Result Run(AddressSpace space, KernelLayout layout, KernelSymbols symbols, WalkBudget? budget = null)
    {
        budget ??= WalkBudget.For(space.Memory.GuestPages);
        var memory = space.Memory;
        var free = new ulong[(memory.PfnLimit + 63) / 64];
        var zones = new List<Zone>();
        var problems = new List<string>();
        for (var node = 0; node < symbols.NodeDataLength; node++)
        {
            if (!space.TryReadUInt64(symbols.NodeData + (ulong)node * 8, out var pgdat))
            {
                problems.Add($"node_data[{node}] is not in guest memory");
                break;
            }
            if (pgdat == 0)
            {
                continue;
            }
            for (var z = 0; z < layout.MaxNrZones; z++)
            {
                var zone = pgdat + (ulong)layout.NodeZones + (ulong)(z * layout.ZoneSize);
                var result = WalkZone(space, layout, symbols, node, z, zone, free, budget);
                zones.Add(result);
                if (result.Problem is not null)
                {
                    problems.Add(result.Problem);
                }
                else if (!result.Trusted)
                {
                    problems.Add($"node {node} zone {result.Name}: walked {result.FreePagesWalked} free pages, NR_FREE_PAGES says {result.NrFreePages}");
                }
            }
        }
        return new Result(zones, free, problems);
    }

    private static Zone WalkZone(AddressSpace space, KernelLayout layout, KernelSymbols symbols, int node, int z, ulong zone, ulong[] free, WalkBudget budget)
    {
        var name = space.TryReadUInt64(zone + (ulong)layout.ZoneName, out var namePtr) && namePtr != 0
            && space.TryReadString(namePtr, 16, out var n) ? n : $"zone{z}";
        if (!space.TryReadUInt64(zone + (ulong)layout.ZoneVmStat + (ulong)(layout.NrFreePagesIndex * 8), out var nrFreeRaw))
        {
            return new Zone(node, name, 0, 0, $"node {node} zone {name}: struct zone is not in guest memory");
        }
        var nrFree = (long)nrFreeRaw;
        var limit = space.Memory.PfnLimit;
        var blocks = new List<(ulong Pfn, int Order)>();
        var walked = 0UL;
        var mine = new HashSet<ulong>();
        for (var order = 0; order < layout.MaxOrder; order++)
        {
            for (var mt = 0; mt < layout.MigrateTypes; mt++)
            {
                var head = zone + (ulong)layout.ZoneFreeArea + (ulong)(order * layout.FreeAreaSize)
                    + (ulong)layout.FreeAreaFreeList + (ulong)(mt * 16);
                string Where() => $"node {node} zone {name} order {order} migratetype {mt}";
                if (!space.TryReadUInt64(head + (ulong)layout.ListNext, out var current))
                {
                    return new Zone(node, name, walked, nrFree, $"{Where()}: free list head is not in guest memory");
                }
                if (current == 0)
                {
                    continue; // never initialised: an empty zone
                }
                var steps = 0UL;
                var maxSteps = (limit >> order) + 1;
                while (current != head)
                {
                    if (!budget.Take())
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: {budget.Spent}");
                    }
                    if (++steps > maxSteps)
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: free list longer than the guest could hold: cycle");
                    }
                    var page = current - (ulong)layout.PageBuddyList;
                    var delta = page - symbols.VmemmapBase;
                    if (page < symbols.VmemmapBase || delta % (ulong)layout.PageStructSize != 0)
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: entry 0x{current:x} is not a struct page in vmemmap");
                    }
                    var pfn = delta / (ulong)layout.PageStructSize;
                    if (pfn + (1UL << order) > limit)
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: block at pfn 0x{pfn:x} lies outside guest memory");
                    }
                    if (!space.TryReadInt32(page + (ulong)layout.PageType, out var pageType)
                        || !space.TryReadUInt64(page + (ulong)layout.PagePrivate, out var privateOrder))
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: struct page of pfn 0x{pfn:x} is not in guest memory");
                    }
                    if (pageType != symbols.PageBuddyMapcount || privateOrder != (ulong)order)
                    {
                        return new Zone(node, name, walked, nrFree,
                            $"{Where()}: pfn 0x{pfn:x} is not a free block of this order (page_type {pageType}, order {privateOrder})");
                    }
                    if (!mine.Add(pfn))
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: pfn 0x{pfn:x} listed twice: cycle");
                    }
                    blocks.Add((pfn, order));
                    walked += 1UL << order;
                    if (!space.TryReadUInt64(current + (ulong)layout.ListNext, out current))
                    {
                        return new Zone(node, name, walked, nrFree, $"{Where()}: link after pfn 0x{pfn:x} is not in guest memory");
                    }
                }
            }
        }
        var result = new Zone(node, name, walked, nrFree, null);
        if (result.Trusted)
        {
            foreach (var (pfn, order) in blocks)
            {
                for (var p = pfn; p < pfn + (1UL << order); p++)
                {
                    free[p >> 6] |= 1UL << (int)(p & 63);
                }
            }
        }
        return result;
    }
}
