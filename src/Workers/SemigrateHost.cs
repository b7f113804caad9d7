using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers;

/// <summary>The host every command and worker starts from: appsettings.json beside the executable,
/// then SEMIGRATE__Section__Key environment variables; logs go to stderr so stdout stays parseable.</summary>
public static class SemigrateHost
{
    public const string EnvironmentPrefix = "SEMIGRATE__";

    public static HostApplicationBuilder CreateBuilder()
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings
        {
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Configuration
            .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true)
            .AddEnvironmentVariables(EnvironmentPrefix);
        builder.Logging.AddConfiguration(builder.Configuration.GetSection("Logging"));
        builder.Logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.AddSettings();
        return builder;
    }
}
