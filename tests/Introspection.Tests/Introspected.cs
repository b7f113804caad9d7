using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Classification;
using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Tests;

/// <summary>One introspection of a guest memory file, with its memory kept open for checks.</summary>
internal sealed class Introspected : IDisposable
{
    public Introspected(string image, KernelLayout layout)
    {
        Memory = GuestMemory.Open(image);
        Layout = layout;
        Result = GuestIntrospection.Run(Memory, layout);
    }

    public GuestMemory Memory { get; }

    public KernelLayout Layout { get; }

    public GuestIntrospection Result { get; }

    public ClassificationMap Classify(params string[] plain) => Classifier.Classify(Memory, Result, plain.ToHashSet());

    public bool IsFree(ulong pfn) => (Result.FreeBitmap[pfn >> 6] & (1UL << (int)(pfn & 63))) != 0;

    public Walks.ProcessPages.Result Process(string comm) => Result.Processes.Single(p => p.Task.Comm == comm);

    /// <summary>Runs on a worker thread with a time limit: a walk over bad data must never hang.</summary>
    public static async Task<Introspected> WithinAsync(TimeSpan bound, string image, KernelLayout layout) =>
        await Task.Run(() => new Introspected(image, layout)).WaitAsync(bound);

    public void Dispose() => Memory.Dispose();
}
