namespace SEmigrate.Contracts.Migration;

/// <summary>The guest pages in [<paramref name="FirstPfn"/>, <paramref name="EndPfn"/>) go to
/// <paramref name="Host"/>; <paramref name="Pages"/> of them are guest memory (the rest are holes).</summary>
public sealed record Assignment(string Host, long FirstPfn, long EndPfn, long Pages);

/// <summary>Where every page goes: the main host's range first, then the sub-hosts'.</summary>
public sealed record PlacementPlan(IReadOnlyList<Assignment> Assignments);

/// <summary>Decides which pages go where, deterministically (the same inputs give the same plan, which
/// workflow replay needs). Pages move in whole chunks of contiguous page numbers. The main host takes
/// the lowest chunks, up to its capacity: low memory holds the kernel's text and data, the likeliest to
/// be touched after switch-over. The rest is spread over the sub-hosts in proportion to their capacity,
/// so that their transfers, which run in parallel, finish at about the same time.</summary>
public static class Placement
{
    public static PlacementPlan Plan(IReadOnlyList<int> chunkGuestPages, int chunkPages, Destination main, IReadOnlyList<Destination> subHosts)
    {
        if (chunkPages <= 0)
        {
            throw new PlacementException($"chunk size {chunkPages} is not positive");
        }
        foreach (var d in subHosts.Prepend(main))
        {
            if (d.CapacityPages < 0)
            {
                throw new PlacementException($"host {d.Host} has a negative capacity ({d.CapacityPages} pages)");
            }
        }
        var names = subHosts.Select(s => s.Host).Prepend(main.Host).ToList();
        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count)
        {
            throw new PlacementException($"a host appears twice among the destinations ({string.Join(", ", names)})");
        }
        var total = chunkGuestPages.Sum(c => (long)c);
        var capacity = subHosts.Sum(s => s.CapacityPages) + main.CapacityPages;
        if (total > capacity)
        {
            throw new PlacementException(
                $"the VM has {total} pages but the destinations hold {capacity} ({string.Join(", ", subHosts.Prepend(main).Select(d => $"{d.Host} {d.CapacityPages}"))}): nothing was moved");
        }

        // Quotas: the main host up to its capacity, the remainder split over sub-hosts by capacity.
        var quotas = new long[names.Count];
        quotas[0] = Math.Min(main.CapacityPages, total);
        var rest = total - quotas[0];
        var subCapacity = subHosts.Sum(s => s.CapacityPages);
        for (var i = 0; i < subHosts.Count; i++)
        {
            quotas[i + 1] = subCapacity == 0 ? 0 : Math.Min(subHosts[i].CapacityPages, (long)Math.Ceiling((double)rest * subHosts[i].CapacityPages / subCapacity));
        }
        var capacities = subHosts.Select(s => s.CapacityPages).Prepend(main.CapacityPages).ToArray();

        // Walk the chunks in order; a chunk goes to the current host while its quota lasts, and past
        // the quota while its capacity lasts only if no later host can take it.
        var assignments = new List<Assignment>();
        var host = 0;
        long first = 0, pages = 0;
        for (var c = 0; c < chunkGuestPages.Count; c++)
        {
            var load = chunkGuestPages[c];
            while (host < names.Count && load > 0 && pages + load > quotas[host] && !(pages + load <= capacities[host] && !LaterFits(host, load)))
            {
                Close(c);
                host++;
            }
            if (host == names.Count)
            {
                throw new PlacementException($"pages from 0x{(long)c * chunkPages:x} on fit no destination in chunks of {chunkPages} pages: nothing was moved");
            }
            pages += load;
        }
        Close(chunkGuestPages.Count);
        return new PlacementPlan(assignments);

        bool LaterFits(int after, int load) => Enumerable.Range(after + 1, names.Count - after - 1).Any(h => capacities[h] >= load);

        void Close(int endChunk)
        {
            var end = (long)endChunk * chunkPages;
            if (pages > 0)
            {
                assignments.Add(new Assignment(names[host], first, end, pages));
            }
            (first, pages) = (end, 0);
        }
    }
}

/// <summary>The destinations cannot hold the VM: refused before anything moves.</summary>
public sealed class PlacementException(string message) : Exception(message);
