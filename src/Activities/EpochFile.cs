using System.Globalization;
using SEmigrate.MemoryServer.Store;

namespace SEmigrate.Activities;

/// <summary>Key epochs handed out from one file, each written down (durably: the file and its folder
/// flushed) before it is used, so that a restarted worker, a crashed machine or a second attempt never
/// seals under an epoch (so a nonce) already used. Another process taking epochs from the same file
/// (a second worker on the same state) waits for this one: a lock file held across read and write.
/// Epochs count up from <paramref name="first"/>.</summary>
public sealed class EpochFile(string path, uint first = 1)
{
    private static readonly Lock Gate = new();

    public uint Next()
    {
        lock (Gate)
        {
            using var held = HoldLock();
            var next = File.Exists(path) ? checked(uint.Parse(File.ReadAllText(path), CultureInfo.InvariantCulture) + 1) : first;
            Durable.ReplaceFile(path, next.ToString(CultureInfo.InvariantCulture));
            return next;
        }
    }

    /// <summary>An exclusive lock on PATH.lock, across processes (.NET locks a file opened without sharing).</summary>
    private FileStream HoldLock()
    {
        for (var until = DateTime.UtcNow.AddSeconds(30); ; Thread.Sleep(5))
        {
            try
            {
                return new FileStream(path + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < until)
            {
                // another process holds it for a moment
            }
        }
    }
}
