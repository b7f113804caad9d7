using SEmigrate.Contracts;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Introspection.Classification;

/// <summary>Free pages travel as zero, pages that only plain-listed processes map travel as-is, and
/// everything else is sealed. Fail closed: a page also mapped by a process not on the list stays
/// sealed, and so does every page when the task list or a process's page tables could not be walked
/// completely (then we cannot know who else maps it), or a page is both free and mapped.</summary>
public static class Classifier
{
    public static ClassificationMap Classify(GuestMemory memory, GuestIntrospection result, IReadOnlySet<string> plainProcesses)
    {
        var limit = memory.PfnLimit;
        var classes = new byte[limit];
        Array.Fill(classes, ClassificationMap.NotGuest);
        foreach (var r in memory.Ranges)
        {
            classes.AsSpan((int)r.FirstPfn, (int)r.Pages).Fill((byte)PageClass.Sealed);
        }

        var words = (int)((limit + 63) / 64);
        var plain = new ulong[words];
        var others = new ulong[words];
        var everyMapperKnown = result.TaskListComplete && result.Processes.All(p => p.Problem is null);
        // Tasks that share an mm share its page array: each array is gone through once, not once a task
        // (a forged guest can list thousands of tasks on one mm that maps all of memory).
        foreach (var shared in result.Processes.GroupBy(p => (object)p.Pfns, ReferenceEqualityComparer.Instance))
        {
            var targets = shared.Select(p => plainProcesses.Contains(p.Task.Comm) ? plain : others).Distinct();
            foreach (var target in targets)
            {
                foreach (var pfn in shared.First().Pfns)
                {
                    target[pfn >> 6] |= 1UL << (int)(pfn & 63);
                }
            }
        }

        var free = result.FreeBitmap;
        for (var w = 0; w < words; w++)
        {
            var zero = free[w] & ~plain[w] & ~others[w];
            var asIs = everyMapperKnown ? plain[w] & ~others[w] & ~free[w] : 0;
            if ((zero | asIs) == 0)
            {
                continue;
            }
            var basePfn = (ulong)w << 6;
            for (var bits = zero; bits != 0; bits &= bits - 1)
            {
                Set(classes, memory, basePfn + (ulong)System.Numerics.BitOperations.TrailingZeroCount(bits), PageClass.Zero);
            }
            for (var bits = asIs; bits != 0; bits &= bits - 1)
            {
                Set(classes, memory, basePfn + (ulong)System.Numerics.BitOperations.TrailingZeroCount(bits), PageClass.Plain);
            }
        }
        return new ClassificationMap(classes);
    }

    // A page whose bytes are missing from the file (a truncated dump) stays sealed.
    private static void Set(byte[] classes, GuestMemory memory, ulong pfn, PageClass c)
    {
        if (classes[pfn] == (byte)PageClass.Sealed && memory.IsPresent(pfn))
        {
            classes[pfn] = (byte)c;
        }
    }
}
